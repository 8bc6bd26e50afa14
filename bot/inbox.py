"""The agents' inbox: conversations handed to a person, claimed, answered live, transferred back to the
bot or resolved; customers' email addresses left while nobody was available; the agent's presence.

``/inbox`` is the page; ``/api/inbox/...`` is its JSON API (the simulated agent uses it too). Every
route needs a signed-in agent or admin; writes need the session's CSRF token. Only the agent who
claimed a conversation answers, transfers or resolves it; an admin may step into any claimed one.
The page's heartbeat (``PUT /api/inbox/presence``) keeps its agent online: without one for
``PRESENCE_TTL_S`` seconds the agent counts as gone, and customers asking for a person are told
that nobody is available.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, render_template, request
from pydantic import Field

from bot.availability import availability
from bot.errors import ApiError
from bot.live_events import AFTER_PARAMETER, after_index, conversation_stream, sse_response, turn_out
from bot.schemas import Body
from bot.services import services
from bot.sessions import console_operation, current_user, guard
from bot.validation import parse_body
from feedback_store.handoffs import PRESENCE_TTL_S
from feedback_store.records import MAX_TEXT, AgentTurn, BotTurn, Conversation, Handoff

bp = Blueprint("inbox", __name__)
bp.before_request(guard("agent"))

API = "/api/inbox"
HEARTBEAT_S = PRESENCE_TTL_S // 3
LISTED = 100
AGENT_FOLLOWS = frozenset({"user", "assistant", "agent"})


class PresenceIn(Body):
    status: Literal["online", "away"] = Field(description="online: customers may be handed to you")


class AgentReplyIn(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="what the customer reads, under your name")


def _supervisor() -> bool:
    return current_user().role == "admin"


def _listed(handoffs: list[Handoff], asked: dict[str, str], convs: dict[str, Conversation]) -> list[dict[str, Any]]:
    return [{**h.model_dump(), "status": convs[h.conversation_id].status if h.conversation_id in convs else "ended",
             "asked": asked.get(h.conversation_id, "")} for h in handoffs]


@bp.get("/inbox")
def console() -> str:
    """The inbox page (its lists, transcript and replies are driven by console.inbox.js)."""
    return render_template("inbox_console.html", user=current_user(), heartbeat_s=HEARTBEAT_S)


@bp.get(f"{API}/conversations")
def conversations() -> Response:
    """Waiting conversations (oldest first), claimed ones, open contact requests, and who is online."""
    store = services().store
    waiting, claimed = store.handoffs.waiting(LISTED), store.handoffs.claimed(LISTED)
    contact = store.handoffs.contact_requests(LISTED)
    every = waiting + claimed + contact
    asked = store.handoffs.asked(every)
    convs = {c.id: c for c in store.conversations.many([h.conversation_id for h in every])}
    now = availability(services())
    me = current_user()
    return jsonify(waiting=_listed(waiting, asked, convs), claimed=_listed(claimed, asked, convs),
                   contact_requests=_listed(contact, asked, convs), agents_online=store.handoffs.agents_online(),
                   available=now.available, back=now.back,
                   me={"name": me.name, "shown_name": me.shown_name, "presence": store.handoffs.presence(me.name)})


@bp.get(f"{API}/conversations/<conv_id>")
def conversation(conv_id: str) -> Response:
    """A handed-off conversation: its turns (the bot's part before the handoff's notice), its handoffs."""
    store = services().store
    conv = store.conversations.get(conv_id)
    turns = []
    for turn in store.conversations.turns(conv_id):
        out = turn_out(turn).model_dump()
        if isinstance(turn, BotTurn):
            out["source"] = turn.source
        turns.append(out)
    return jsonify(conversation={"id": conv.id, "status": conv.status, "adapter_version": conv.adapter_version,
                                 "created_at": conv.created_at, "csat": conv.csat, "n_turns": conv.n_turns},
                   handoffs=[h.model_dump() for h in store.handoffs.history(conv_id)], turns=turns)


@bp.get(f"{API}/conversations/<conv_id>/events")
def events(conv_id: str) -> Response:
    """The conversation live (SSE): every turn after ``?after=`` and each status, until it ends."""
    svc = services()
    svc.store.conversations.get(conv_id)
    after = after_index()
    return sse_response(conversation_stream(svc, conv_id, after, AGENT_FOLLOWS, frozenset({"ended"})))


@bp.post(f"{API}/conversations/<conv_id>/claim")
def claim(conv_id: str) -> Response:
    """Take a waiting conversation; 409 when another agent took it first or it is not waiting."""
    me = current_user()
    return jsonify(services().store.handoffs.claim(conv_id, me.name, me.shown_name).model_dump())


@bp.post(f"{API}/conversations/<conv_id>/messages")
def reply(conv_id: str) -> tuple[Response, int]:
    """Answer the customer in a conversation you claimed; it reaches their widget at once."""
    text = parse_body(AgentReplyIn).text.strip()
    if not text:
        raise ApiError(422, "invalid_request", "text: the reply is empty")
    me = current_user()
    turn = services().store.handoffs.reply(conv_id, AgentTurn(
        index=0, agent_id=me.name, agent_name=me.shown_name, text=text, created_at=time.time()), _supervisor())
    return jsonify(turn_out(turn).model_dump()), 201


@bp.post(f"{API}/conversations/<conv_id>/transfer")
def transfer(conv_id: str) -> Response:
    """Give a conversation you claimed back to the bot."""
    handoff = services().store.handoffs.transfer_to_bot(conv_id, current_user().name, _supervisor())
    return jsonify(handoff.model_dump())


@bp.post(f"{API}/conversations/<conv_id>/resolve")
def resolve(conv_id: str) -> Response:
    """Resolve: a conversation you claimed ends (the customer is asked for a rating); an open contact
    request is marked answered."""
    outcome = services().store.handoffs.resolve(conv_id, current_user().name, _supervisor())
    return jsonify(outcome=outcome, handoff=services().store.handoffs.get(conv_id).model_dump())


@bp.put(f"{API}/presence")
def presence() -> Response:
    """Set yourself online or away; the page repeats it every ``heartbeat_s`` seconds to stay so."""
    body = parse_body(PresenceIn)
    store = services().store
    me = current_user()
    store.handoffs.set_presence(me.name, body.status)
    return jsonify(status=body.status, agents_online=store.handoffs.agents_online(), heartbeat_s=HEARTBEAT_S,
                   expires_s=PRESENCE_TTL_S)


def openapi_section():
    """The inbox API's part of /openapi.json."""
    from bot.openapi import Section

    op, c = console_operation, f"{API}/conversations/{{conv_id}}"
    mine = "Only the agent who claimed it (or an admin) may."
    stream = op("The conversation live: server-sent 'turn' (TurnOut) and 'status' (StatusEvent) events after "
                "the query's 'after' turn index, until it ends")
    stream["responses"]["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    stream["parameters"] = AFTER_PARAMETER
    return Section({
        f"{API}/conversations": {"get": op("Waiting conversations (oldest first), claimed ones, open contact "
                                           "requests, the agents online and whether a person is available")},
        c: {"get": op("A handed-off conversation: its turns and handoffs")},
        f"{c}/events": {"get": stream},
        f"{c}/claim": {"post": op("Claim a waiting conversation (atomic: one agent wins)", write=True,
                                  also=(409,))},
        f"{c}/messages": {"post": op("Reply to the customer", "201", body=AgentReplyIn, write=True, also=(409,),
                                     description=mine)},
        f"{c}/transfer": {"post": op("Transfer the conversation back to the bot", write=True, also=(409,),
                                     description=mine)},
        f"{c}/resolve": {"post": op("Resolve: end a claimed conversation, or mark a contact request answered",
                                    write=True, also=(409,), description=mine)},
        f"{API}/presence": {"put": op("Set your presence (online or away); repeat it as a heartbeat", body=PresenceIn,
                                      write=True)},
    }, [PresenceIn, AgentReplyIn])
