"""The chat API the widget (and the simulated customers) use; the customer token is a bearer token.

A message is logged as the customer's turn. The help articles for the customer's recent messages
are retrieved from this process's live index; when the best one fits (``kb_min_score``), the
engine answers on the conversation's pinned adapter with them in its prompt, and the reply is
logged as a bot turn with everything PPO needs and the articles it saw. When none fits, the bot
does not generate: ``reply_when_nothing_fits`` sends an honest decline with the way to a person
(``contact_address``), logged as a ``fallback`` turn. The reply comes back as JSON, or as
server-sent events (``delta`` chunks, then ``done`` or ``error``) when asked for; a decline is one
``delta``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

from flask import Blueprint, Response, request, url_for
from pydantic import BaseModel

from bot import raters
from bot.errors import ApiError, error_payload
from bot.openapi import Section, json_body, json_response, operation, ref
from bot.schemas import (
    ConversationCreated,
    Delta,
    Ended,
    ErrorOut,
    MessageIn,
    RatingIn,
    RatingOut,
    Reply,
    StartIn,
    Transcript,
    TurnOut,
)
from bot.services import Services, services
from bot.validation import bearer_token, parse_body
from feedback_store.records import ArticleRef, BotTurn, Conversation
from loopdesk.config import Settings

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__, url_prefix="/api/conversations")

DECLINE = "I'm sorry, I can't help with that here. You can reach our team at {contact}."


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


@bp.post("")
def start() -> Response:
    """Open a conversation pinned to the adapter version the engine picks (active or canary)."""
    body = parse_body(StartIn, optional=True)
    svc = services()
    conv, token = svc.store.conversations.start(svc.engine.choose_version(), body.meta)
    created = ConversationCreated(conversation_id=conv.id, token=token, adapter_version=conv.adapter_version)
    response = _json(created, 201)
    response.headers["Location"] = url_for("chat.transcript", conv_id=conv.id)
    return response


@bp.post("/<conv_id>/messages")
def post_message(conv_id: str) -> Response:
    """Log the customer's message and answer it (JSON, or SSE for ``Accept: text/event-stream``)."""
    token = bearer_token()
    svc = services()
    conv = svc.store.conversations.check_token(conv_id, token)
    text = parse_body(MessageIn).text
    if not text.strip():
        raise ApiError(422, "invalid_request", "text: the message is empty")
    if len(text) > svc.settings.max_message_chars:
        raise ApiError(422, "message_too_long",
                       f"the message has {len(text)} characters; the limit is {svc.settings.max_message_chars}")
    svc.store.conversations.append_customer(conv_id, token, text)
    messages = [{"role": t.role, "content": t.text} for t in svc.store.conversations.turns(conv_id)]
    if request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) == "text/event-stream":
        return Response(_stream(svc, conv, messages), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _json(_answer(svc, conv, messages))


def _answer(svc: Services, conv: Conversation, messages: list[dict],
            on_text: Callable[[str], None] | None = None) -> Reply:
    """Answer from the help articles that fit the customer's recent messages, or decline if none does."""
    retrieval = svc.knowledge.for_customer([m["content"] for m in messages if m["role"] == "user"])
    if not retrieval.fits:
        return reply_when_nothing_fits(svc, conv, on_text)
    gen = svc.engine.generate(messages, conv.adapter_version, on_text=on_text, passages=retrieval.passages)
    svc.metrics.observe_generation(gen)
    turn = svc.store.conversations.append_bot(conv.id, BotTurn(
        index=0, text=gen.text, context=gen.context, prompt_token_ids=gen.prompt_token_ids,
        reply_token_ids=gen.reply_token_ids, logprobs=gen.logprobs,
        adapter_version=gen.adapter_version, latency_ms=gen.latency_ms, finished=gen.finished,
        created_at=time.time(),
        articles=[ArticleRef(id=h.id, version=h.version, title=h.title, score=h.score) for h in retrieval.hits],
    ))
    return _reply(turn)


def decline(settings: Settings) -> str:
    """What the bot says when no help article fits: that it cannot help here, and who can."""
    return DECLINE.format(contact=settings.contact_address.strip().rstrip("."))


def reply_when_nothing_fits(svc: Services, conv: Conversation,
                            on_text: Callable[[str], None] | None = None) -> Reply:
    """The branch taken when no help article fits: the model does not generate; the customer gets
    ``decline`` (one delta when streamed), logged as a ``fallback`` turn that is never a PPO sample.
    A handoff to a person belongs here too."""
    started = time.perf_counter()
    text = decline(svc.settings)
    if on_text is not None:
        on_text(text)
    svc.metrics.observe_fallback()
    turn = svc.store.conversations.append_bot(conv.id, BotTurn(
        index=0, text=text, context="", prompt_token_ids=[], reply_token_ids=[], logprobs=[],
        adapter_version=conv.adapter_version, latency_ms=1000 * (time.perf_counter() - started), finished=True,
        created_at=time.time(), source="fallback",
    ))
    return _reply(turn)


def _reply(turn: BotTurn) -> Reply:
    return Reply(turn_index=turn.index, text=turn.text, adapter_version=turn.adapter_version,
                 finished=turn.finished, source=turn.source)


def _sse(event: str, data: BaseModel) -> str:
    return f"event: {event}\ndata: {data.model_dump_json()}\n\n"


def _stream(svc: Services, conv: Conversation, messages: list[dict]) -> Iterator[str]:
    """SSE events from a worker thread; the reply is logged even if the client goes away."""
    events: queue.Queue[tuple[str, BaseModel]] = queue.Queue()

    def on_text(delta: str) -> None:
        if delta:
            events.put(("delta", Delta(text=delta)))

    def work() -> None:
        try:
            events.put(("done", _answer(svc, conv, messages, on_text)))
        except Exception as exc:  # every failure must reach the client as an error event
            status, body = error_payload(exc)
            if status >= 500:
                log.exception("reply for conversation %s failed", conv.id)
            events.put(("error", ErrorOut.model_validate(body)))

    threading.Thread(target=work, name=f"reply-{conv.id}", daemon=True).start()
    while True:
        event, data = events.get()
        yield _sse(event, data)
        if event != "delta":
            return


@bp.post("/<conv_id>/end")
def end(conv_id: str) -> Response:
    """End the conversation (idempotent); the widget then asks for a rating."""
    conv = services().store.conversations.end(conv_id, bearer_token())
    return _json(Ended(conversation_id=conv.id, status=conv.status, ended_at=conv.ended_at))


@bp.post("/<conv_id>/rating")
def rate(conv_id: str) -> Response:
    """Rate a conversation the bot answered, 1-5; repeating is harmless, changing works within the window.

    The rating is stored with its provenance (``bot.raters``); one beyond the per-client cap is
    acknowledged alike and stored with weight 0.
    """
    token = bearer_token()
    body = parse_body(RatingIn)
    svc = services()
    changed = svc.store.ratings.rate(conv_id, token, body.score, body.comment, raters.rating_source(svc.settings))
    return _json(RatingOut(conversation_id=conv_id, score=body.score, comment=body.comment, changed=changed))


@bp.get("/<conv_id>")
def transcript(conv_id: str) -> Response:
    """The conversation's turns for its token holder (the widget restores history from it)."""
    store = services().store
    conv = store.conversations.check_token(conv_id, bearer_token())
    turns = [TurnOut(index=t.index, role=t.role, text=t.text, created_at=t.created_at)
             for t in store.conversations.turns(conv_id)]
    return _json(Transcript(
        conversation_id=conv.id, status=conv.status, adapter_version=conv.adapter_version,
        created_at=conv.created_at, ended_at=conv.ended_at, csat=conv.csat,
        csat_comment=conv.csat_comment, turns=turns,
    ))


@bp.delete("/<conv_id>")
def erase(conv_id: str) -> Response:
    """Erase the conversation and everything stored about it, for its token holder (idempotent: 204 again)."""
    services().store.erasure.erase(conv_id, bearer_token())
    return Response(status=204)


SSE_DESCRIPTION = (
    "With 'Accept: text/event-stream' the reply streams as server-sent events: 'delta' events "
    "(data: Delta) while generating, then one 'done' (data: Reply) or 'error' (data: ErrorOut)."
)


def openapi_section() -> Section:
    """The chat API's part of /openapi.json."""
    base, token = "/api/conversations", [{"customerToken": []}]
    common = (401, 403, 404, 429)
    with_body = (400, 413, 415, 422)
    reply = {"200": {
        "description": "the bot's reply (JSON, or an SSE stream when asked for)",
        "content": {"application/json": {"schema": ref(Reply)},
                    "text/event-stream": {"schema": {"type": "string", "description": SSE_DESCRIPTION}}},
    }}
    paths = {
        base: {"post": operation(
            "Start a conversation pinned to one adapter version",
            {"201": json_response(ConversationCreated, "the conversation and its customer token")},
            *with_body, 429, 503, body=json_body(StartIn, required=False))},
        f"{base}/{{conv_id}}": {"get": operation(
            "The transcript, for the token holder", {"200": json_response(Transcript, "the turns so far")},
            *common, security=token), "delete": operation(
            "Erase the conversation: its turns, rating, annotations, meta and every index entry (idempotent); "
            "what stays is the record that it was erased, with the training runs that may have used it",
            {"204": {"description": "erased now or before"}}, *common, security=token)},
        f"{base}/{{conv_id}}/messages": {"post": operation(
            "Send a message and get the bot's reply", reply, *with_body, *common, 409, 503,
            body=json_body(MessageIn), security=token)},
        f"{base}/{{conv_id}}/end": {"post": operation(
            "End the conversation (idempotent)", {"200": json_response(Ended, "the conversation's status")},
            *common, security=token)},
        f"{base}/{{conv_id}}/rating": {"post": operation(
            "Rate the conversation (409 until the bot has answered); a rating may be corrected within the window",
            {"200": json_response(RatingOut, "the stored rating")}, *with_body, *common, 409,
            body=json_body(RatingIn), security=token)},
    }
    models = [StartIn, MessageIn, RatingIn, ConversationCreated, Reply, Delta, Ended, RatingOut, Transcript]
    schemes = {"customerToken": {"type": "http", "scheme": "bearer",
                                 "description": "the token returned when the conversation started"}}
    return Section(paths, models, schemes)
