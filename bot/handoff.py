"""The customer's side of a handoff to a person: when the bot hands off, what it says, and the routes
the widget uses to ask for a person, follow the chat live and leave an email address.

The bot hands off (``hand_off``) when the customer presses "Talk to a person" (reason
``customer_button``); when their message's best help article, above ``kb_min_score``, is the one
the knowledge base tags ``handoff`` (``customer_asked``: a rule on retrieval, so no phrasing that
article covers depends on the model); when no help article fits (``no_article``); and at the
``handoff_after_reasks``-th re-ask since the bot last took over (``reasks``). With an agent online
within ``business_hours`` the conversation then waits for one (``waiting_for_agent``) and the bot
stops answering; otherwise it stays with the bot, and the customer is told that nobody is
available, when the team is back, and that they may leave an email address for a reply. The notice
is logged as a bot turn (``source`` ``handoff``, or ``fallback`` for ``no_article``), never a sample.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from flask import Blueprint, Response, request

from bot.availability import availability, handoff_state
from bot.live_events import AFTER_PARAMETER, after_index, conversation_stream, sse_response, turn_out
from bot.schemas import ContactIn, ContactOut, HandoffOut, Reply, StatusEvent, TurnOut
from bot.services import Services, services
from bot.validation import bearer_token, model_response, parse_body
from bot.errors import ApiError
from feedback_store.records import WITH_A_PERSON, BotTurn, Conversation, CustomerTurn, HandoffReason, Turn
from loopdesk.config import Settings
from loopdesk.knowledge import is_reask, without_reask

bp = Blueprint("handoff", __name__, url_prefix="/api/conversations")

HANDOFF_TAG = "handoff"
SORRY = "I'm sorry, I can't help with that here. "
DECLINE = SORRY + "You can reach our team at {contact}."
WAITING = ("I'm passing you to a member of our team. Please stay in this chat: they will reply here as soon as "
           "one is free.")
NOBODY = ("Nobody from our team is available in this chat right now{back}. Leave your email address below and "
          "they will reply by email, or reach them at {contact}.")
THANKS = "Thank you. Our team will reply to {email}."
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
CUSTOMER_FOLLOWS = frozenset({"agent"})  # the widget shows the agents' turns; its own and the bot's it has


def decline(settings: Settings) -> str:
    """What the bot says when no help article fits and nobody can take the chat: that it cannot help here,
    and who can."""
    return DECLINE.format(contact=_contact(settings))


def _contact(settings: Settings) -> str:
    return settings.contact_address.strip().rstrip(".")


def notice_text(settings: Settings, reason: HandoffReason, available: bool, back: str) -> str:
    """The bot's words on handing off: to a person who will reply here, or that nobody is available."""
    if available:
        return (SORRY if reason == "no_article" else "") + WAITING
    if reason == "no_article":
        return decline(settings)
    return NOBODY.format(back=f"; they are back {back}" if back else "", contact=_contact(settings))


def reason_to_hand_off(svc: Services, conv: Conversation, turns: list[Turn]) -> HandoffReason | None:
    """Whether the customer's newest message (the last turn) asks for a person, or is the re-ask that
    reaches ``handoff_after_reasks``; ``no_article`` is the reply's own retrieval's to find.

    The message is searched alone and without its re-ask phrases ("That doesn't answer my question"
    shares words with the escalation article, yet says the last reply missed, not "a person please"). On
    the demo shop none of the 442 intent phrasings, nor any of their 1,326 re-asks, retrieves the
    escalation article first, and each of its 8 person/assistant questions does."""
    retrieval = svc.knowledge.retrieve(without_reask(turns[-1].text))
    if retrieval.hits and HANDOFF_TAG in retrieval.passages[0].tags:
        return "customer_asked"
    limit = svc.settings.handoff_after_reasks
    if limit:
        latest = svc.store.handoffs.get(conv.id) if conv.handoffs else None
        since = latest.turn_index + 1 if latest else 0
        if sum(isinstance(t, CustomerTurn) and is_reask(t.text) for t in turns[since:]) >= limit:
            return "reasks"
    return None


def hand_off(svc: Services, conv: Conversation, reason: HandoffReason,
             on_text: Callable[[str], None] | None = None, reply_to: int | None = None) -> Reply:
    """Hand the open conversation to a person (or tell the customer nobody is available), logging the notice
    (as the answer to customer turn ``reply_to`` when a message led to it).

    A conversation that went to a person meanwhile (the customer pressed the button while this message
    was on its way) stays as it is: the reply's ``turn_index`` is then -1, and nothing is logged."""
    started, now = time.perf_counter(), availability(svc)
    text = notice_text(svc.settings, reason, now.available, now.back)
    if on_text is not None:
        on_text(text)
    source = "fallback" if reason == "no_article" else "handoff"
    notice = BotTurn(index=0, text=text, context="", prompt_token_ids=[], reply_token_ids=[], logprobs=[],
                     adapter_version=conv.adapter_version, latency_ms=1000 * (time.perf_counter() - started),
                     finished=True, created_at=time.time(), source=source, reply_to=reply_to)
    index, status = svc.store.handoffs.request(conv.id, reason, now.available, notice)
    if index >= 0:
        svc.metrics.observe_handoff(reason, now.available, source)
    return Reply(turn_index=index, text=text, adapter_version=conv.adapter_version, finished=True, source=source,
                 status=status, handoff=handoff_state(svc, svc.store.handoffs.get(conv.id)))


@bp.post("/<conv_id>/handoff")
def request_person(conv_id: str) -> Response:
    """The customer pressed "Talk to a person": hand off now (nothing changes while a person has the chat)."""
    svc = services()
    conv = svc.store.conversations.check_token(conv_id, bearer_token())
    if conv.status == "ended":
        raise ApiError(409, "conflict", "the conversation has ended: start a new chat to talk to a person")
    notice = None
    if conv.status not in WITH_A_PERSON:
        reply = hand_off(svc, conv, "customer_button")
        if reply.turn_index >= 0:
            notice = turn_out(svc.store.conversations.turns(conv_id)[reply.turn_index])
    conv = svc.store.conversations.get(conv_id)
    return model_response(HandoffOut(conversation_id=conv_id, status=conv.status, notice=notice,
                                     handoff=handoff_state(svc, svc.store.handoffs.get(conv_id))))


@bp.get("/<conv_id>/events")
def events(conv_id: str) -> Response:
    """The agents' replies and the status, live (SSE); ``?after=`` the last turn index the widget has."""
    svc = services()
    svc.store.conversations.check_token(conv_id, bearer_token())
    after = after_index()
    return sse_response(conversation_stream(svc, conv_id, after, CUSTOMER_FOLLOWS,
                                            frozenset({"open", "ended"})))


@bp.post("/<conv_id>/contact")
def leave_contact(conv_id: str) -> Response:
    """Leave an email address for the team's reply (after asking for a person while nobody was available)."""
    svc = services()
    svc.store.conversations.check_token(conv_id, bearer_token())
    email = parse_body(ContactIn).email.strip()
    if not EMAIL.match(email):
        raise ApiError(422, "invalid_request", f"email: {email!r} is not an email address like name@example.com")
    handoff = svc.store.handoffs.leave_contact(conv_id, email)
    return model_response(ContactOut(conversation_id=conv_id, contact_email=handoff.contact_email,
                                     text=THANKS.format(email=email)))


def openapi_section():
    """The customer side of a handoff in /openapi.json."""
    from bot.openapi import Section, json_body, json_response, operation

    base, token = "/api/conversations/{conv_id}", [{"customerToken": []}]
    stream = {"200": {"description": "server-sent events: 'status' (data: StatusEvent) now and at each change, "
                                     "'turn' (data: TurnOut) for each agent reply after the query's 'after' turn "
                                     "index; ends when the chat is back with the bot or ended (reconnect with "
                                     "'after' while it is with a person)",
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
    return Section({
        f"{base}/handoff": {"post": operation(
            "Ask for a person: the chat waits for an agent, or the answer says nobody is available and when "
            "the team is back", {"200": json_response(HandoffOut, "the status and the bot's notice")},
            401, 403, 404, 409, 429, security=token)},
        f"{base}/events": {"get": {**operation("Follow the chat live: agents' replies and status changes", stream,
                                               401, 403, 404, 429, security=token),
                                   "parameters": AFTER_PARAMETER}},
        f"{base}/contact": {"post": operation(
            "Leave an email address for the team's reply", {"200": json_response(ContactOut, "the address kept")},
            400, 401, 403, 404, 409, 413, 415, 422, 429, body=json_body(ContactIn), security=token)},
    }, [HandoffOut, ContactIn, ContactOut, StatusEvent, TurnOut])
