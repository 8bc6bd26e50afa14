"""The chat API the widget (and the simulated customers) use; the customer token is a bearer token.

A message is logged as the customer's turn. While the conversation is with a person
(``waiting_for_agent``, ``with_agent``) the bot does not answer: the message is the agent's, and
the answer is 202 with the status. Otherwise the bot hands off when the customer asks for a person
or re-asks too often (``bot.handoff``); else the help articles for the customer's recent messages
are retrieved from this process's live index, and when the best one fits (``kb_min_score``) the
engine answers on the conversation's pinned adapter with them in its prompt; the reply is logged
as a bot turn with everything PPO needs and the articles it saw. When none fits, the model does not
generate: the bot says it cannot help here and hands off (``no_article``). The reply comes back as
JSON, or as server-sent events (``delta`` chunks, then ``done`` or ``error``) when asked for; a
fixed notice is one ``delta``.

A message sent with an ``Idempotency-Key`` is logged once: the key is kept (``idempotency_keep_s``) with
the customer turn, in the same script that appends it, and every bot turn names the customer turn it
answers. The same key again gets that answer (or 409 while it is being answered); when no answer was
logged (generation or the store failed, and the customer got an error), it answers the turn logged
the first time; the same key with another text is a 422.

Backpressure: a message the bot is to answer first takes a place among the replies waiting for the
model (``Engine.reserve``); when they are all taken it is refused with 503 ``overloaded`` and
``Retry-After`` before anything of it is stored. A message for a person (the chat is with an agent)
takes none. A reply that misses its deadline, whose generation thread crashed, or whose streaming
client went away (a stream with nothing to send writes a ``: waiting`` comment each second, so a client
gone while its reply is queued is noticed too) is dropped from the batch and not logged: the customer's
turn stays, without a bot turn after it (a keyed retry answers it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

from flask import Blueprint, Response, request, url_for
from pydantic import BaseModel

from bot import handoff, raters
from bot.availability import handoff_state
from bot.errors import ApiError, error_payload
from bot.live_events import sse_event, sse_response, turn_out
from bot.runtime.admission import Slot
from bot.runtime.errors import GenerationError
from bot.openapi import Section, json_body, json_response, operation, ref
from bot.schemas import (
    ConversationCreated,
    Delta,
    Ended,
    ErrorOut,
    MessageIn,
    Queued,
    RatingIn,
    RatingOut,
    Reply,
    StartIn,
    Transcript,
)
from bot.services import Services, services
from bot.validation import bearer_token, idempotency_key, model_response, parse_body
from feedback_store.errors import FeedbackStoreError, RedisError
from feedback_store.records import WITH_A_PERSON, ArticleRef, BotTurn, Conversation, Turn

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__, url_prefix="/api/conversations")
HEARTBEAT_S = 1.0  # a stream with nothing to send writes a comment this often, which notices a client gone


@bp.post("")
def start() -> Response:
    """Open a conversation pinned to the adapter version the engine picks (active or canary)."""
    body = parse_body(StartIn, optional=True)
    svc = services()
    conv, token = svc.store.conversations.start(svc.engine.choose_version(), body.meta)
    created = ConversationCreated(conversation_id=conv.id, token=token, adapter_version=conv.adapter_version)
    response = model_response(created, 201)
    response.headers["Location"] = url_for("chat.transcript", conv_id=conv.id)
    return response


ANSWER_LEASE_S = 60.0
"""How long one request may take to answer a message sent with an ``Idempotency-Key`` before a retry may
answer it instead: a request that fails gives its lease up at once, one whose process died lets it run out."""


@bp.post("/<conv_id>/messages")
def post_message(conv_id: str) -> Response:
    """Log the customer's message and answer it (JSON, or SSE for ``Accept: text/event-stream``); a message
    sent again with the same ``Idempotency-Key`` is not logged again (``_repeat``)."""
    token = bearer_token()
    key = idempotency_key()
    svc = services()
    conv = svc.store.conversations.check_token(conv_id, token)
    text = parse_body(MessageIn).text
    if not text.strip():
        raise ApiError(422, "invalid_request", "text: the message is empty")
    if len(text) > svc.settings.max_message_chars:
        raise ApiError(422, "message_too_long",
                       f"the message has {len(text)} characters; the limit is {svc.settings.max_message_chars}")
    slot = None if conv.status in WITH_A_PERSON else _reserve(svc)  # nothing stored yet when it is refused
    try:
        response = _log_and_answer(svc, conv, token, text, key, slot)
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    if slot is not None:  # back once the reply decodes, or once the response is sent (a stream never read too)
        response.call_on_close(slot.release)
    return response


def _log_and_answer(svc: Services, conv: Conversation, token: str, text: str, key: str,
                    slot: Slot | None) -> Response:
    """Log the message (once, with ``key``) and answer it, or let the agent (202)."""
    if key:
        index, appended = svc.store.conversations.append_customer_once(
            conv.id, token, text, key, svc.settings.idempotency_keep_s, ANSWER_LEASE_S)
        if not appended:
            return _repeat(svc, conv.id, index, key, slot)
    else:
        index = svc.store.conversations.append_customer(conv.id, token, text).index
    if conv.status in WITH_A_PERSON:
        return model_response(Queued(conversation_id=conv.id, turn_index=index, status=conv.status), 202)
    return _respond(svc, conv, svc.store.conversations.turns(conv.id), key, slot)


def _reserve(svc: Services) -> Slot:
    """A place among the waiting replies; ``QueueFullError`` (503 with ``Retry-After``) when none is free."""
    try:
        return svc.engine.reserve()
    except GenerationError as exc:
        svc.metrics.observe_unsent(exc)
        raise


def _repeat(svc: Services, conv_id: str, index: int, key: str, slot: Slot | None) -> Response:
    """A keyed message sent again: the answer logged for it, 202 while a person has the chat, or, when none
    was logged (the first try failed), an answer now to the turn already logged; 409 while another request
    is answering it, or when a later message came after it (that one's answer saw it)."""
    conversations = svc.store.conversations
    answer = conversations.answer_to(conv_id, index)
    conv = conversations.get(conv_id)
    if answer is not None:
        return _send_logged(svc, conv, answer)
    if conv.status in WITH_A_PERSON:
        return model_response(Queued(conversation_id=conv_id, turn_index=index, status=conv.status), 202)
    if conv.status == "ended":
        raise ApiError(409, "conflict", "the conversation has ended")
    turns = conversations.turns(conv_id)
    if turns[-1].index != index:
        answer = conversations.answer_to(conv_id, index)  # answered between the two reads above
        if answer is not None:
            return _send_logged(svc, conversations.get(conv_id), answer)
        raise ApiError(409, "superseded", "a later message was sent after this one; the reply to that one saw it")
    if not conversations.lease_answer(conv_id, key, ANSWER_LEASE_S):
        raise ApiError(409, "still_answering", "this message is still being answered; retry in a moment")
    return _respond(svc, conv, turns, key, slot)


def _send_logged(svc: Services, conv: Conversation, answer: BotTurn) -> Response:
    """The bot turn logged as the answer to a keyed message, sent again."""
    handoff = handoff_state(svc, svc.store.handoffs.get(conv.id)) if answer.source != "model" else None
    return _send(Reply(turn_index=answer.index, text=answer.text, adapter_version=answer.adapter_version,
                       finished=answer.finished, source=answer.source, status=conv.status, handoff=handoff))


def _wants_stream() -> bool:
    return request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) == "text/event-stream"


def _send(reply: Reply) -> Response:
    """A reply already logged, as JSON or as the stream a fixed notice makes (one ``delta``, then ``done``)."""
    if _wants_stream():
        return sse_response(iter([sse_event("delta", Delta(text=reply.text)), sse_event("done", reply)]))
    return model_response(reply)


def _respond(svc: Services, conv: Conversation, turns: list[Turn], key: str, slot: Slot | None) -> Response:
    """Answer the customer's newest turn; when that fails, a keyed message's lease is given up."""
    if _wants_stream():
        return sse_response(_stream(svc, conv, turns, key, slot))
    try:
        return model_response(_answer(svc, conv, turns, slot))
    except Exception as exc:
        _give_up(svc, conv.id, key)
        if isinstance(exc, GenerationError):
            svc.metrics.observe_unsent(exc)
        raise


def _give_up(svc: Services, conv_id: str, key: str) -> None:
    """Release a keyed message's answer lease after a failed answer, so that a retry answers it at once (with
    Redis unreachable the lease runs out instead)."""
    if key:
        try:
            svc.store.conversations.release_answer(conv_id, key)
        except (RedisError, FeedbackStoreError) as exc:
            log.warning("the answer lease of a message in conversation %s stays until it runs out: %s", conv_id, exc)


def _answer(svc: Services, conv: Conversation, turns: list[Turn], slot: Slot | None,
            on_text: Callable[[str], None] | None = None, cancelled: threading.Event | None = None) -> Reply:
    """Hand off if the customer asks for a person (or re-asks too often); else answer from the help articles
    that fit their recent messages, or hand off when none does. The logged reply names the turn it answers.
    ``slot`` is given back once the reply decodes (or here, whatever happens); ``cancelled`` drops it."""
    asked = turns[-1].index
    try:
        reason = handoff.reason_to_hand_off(svc, conv, turns)
        if reason is not None:
            return handoff.hand_off(svc, conv, reason, on_text, reply_to=asked)
        retrieval = svc.knowledge.for_customer([t.text for t in turns if t.role == "user"])
        if not retrieval.fits:
            return handoff.hand_off(svc, conv, "no_article", on_text, reply_to=asked)
        messages = [{"role": "assistant" if t.role == "agent" else t.role, "content": t.text} for t in turns]
        gen = svc.engine.generate(messages, conv.adapter_version, on_text=on_text, passages=retrieval.passages,
                                  slot=slot, cancelled=cancelled)
    finally:
        if slot is not None:
            slot.release()
    svc.metrics.observe_generation(gen)
    turn = svc.store.conversations.append_bot(conv.id, BotTurn(
        index=0, text=gen.text, context=gen.context, prompt_token_ids=gen.prompt_token_ids,
        reply_token_ids=gen.reply_token_ids, logprobs=gen.logprobs,
        adapter_version=gen.adapter_version, latency_ms=gen.latency_ms, finished=gen.finished,
        created_at=time.time(), reply_to=asked,
        articles=[ArticleRef(id=h.id, version=h.version, title=h.title, score=h.score) for h in retrieval.hits],
    ))
    return Reply(turn_index=turn.index, text=turn.text, adapter_version=turn.adapter_version,
                 finished=turn.finished, source=turn.source)


def _stream(svc: Services, conv: Conversation, turns: list[Turn], key: str, slot: Slot | None) -> Iterator[str]:
    """SSE events from a reply thread; when the client goes away (the server closes this generator after
    a write fails) the reply is cancelled: the worker drops its row and nothing is logged."""
    events: queue.Queue[tuple[str, BaseModel]] = queue.Queue()
    cancelled = threading.Event()

    def on_text(delta: str) -> None:
        if delta:
            events.put(("delta", Delta(text=delta)))

    def work() -> None:
        try:
            events.put(("done", _answer(svc, conv, turns, slot, on_text, cancelled)))
        except Exception as exc:  # every failure must reach the client as an error event
            _give_up(svc, conv.id, key)
            status, body = error_payload(exc)
            if isinstance(exc, GenerationError):
                svc.metrics.observe_unsent(exc)
            elif status >= 500:
                log.exception("reply for conversation %s failed", conv.id)
            events.put(("error", ErrorOut.model_validate(body)))

    threading.Thread(target=work, name=f"reply-{conv.id}", daemon=True).start()
    try:
        while True:
            try:
                batch = [events.get(timeout=HEARTBEAT_S)]
            except queue.Empty:
                yield ": waiting\n\n"
                continue
            while batch[-1][0] == "delta" and not events.empty():  # what piled up goes out in one write
                batch.append(events.get_nowait())
            yield "".join(sse_event(event, data) for event, data in batch)
            if batch[-1][0] != "delta":
                return
    finally:
        cancelled.set()  # harmless once the reply is done; otherwise nobody is left to read it


@bp.post("/<conv_id>/end")
def end(conv_id: str) -> Response:
    """End the conversation (idempotent); the widget then asks for a rating."""
    conv = services().store.conversations.end(conv_id, bearer_token())
    return model_response(Ended(conversation_id=conv.id, status=conv.status, ended_at=conv.ended_at))


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
    return model_response(RatingOut(conversation_id=conv_id, score=body.score, comment=body.comment,
                                    changed=changed))


@bp.get("/<conv_id>")
def transcript(conv_id: str) -> Response:
    """The conversation's turns, status and latest handoff for its token holder (the widget restores from it)."""
    svc = services()
    store = svc.store
    conv = store.conversations.check_token(conv_id, bearer_token())
    turns = [turn_out(t) for t in store.conversations.turns(conv_id)]
    return model_response(Transcript(
        conversation_id=conv.id, status=conv.status, adapter_version=conv.adapter_version,
        created_at=conv.created_at, ended_at=conv.ended_at, csat=conv.csat,
        csat_comment=conv.csat_comment, turns=turns,
        handoff=handoff_state(svc, store.handoffs.get(conv_id)) if conv.handoffs else None,
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
    key_header = {"name": "Idempotency-Key", "in": "header", "required": False,
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                  "description": "one per message, the same on every retry of it (a UUID): a retry gets the first "
                                 "try's reply (409 'still_answering' while it is being generated) and logs nothing "
                                 "again; the same key with another text is a 422 'idempotency_key_reused'. Keys are "
                                 "kept LOOPDESK_IDEMPOTENCY_KEEP_S seconds after the conversation's last message"}
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
        f"{base}/{{conv_id}}/messages": {"post": {**operation(
            "Send a message and get the bot's reply (202 without one while the chat is with a person)",
            {**reply, "202": json_response(Queued, "the message waits for the agent; the bot does not answer")},
            *with_body, *common, 409, 503, body=json_body(MessageIn), security=token),
            "parameters": [key_header]}},
        f"{base}/{{conv_id}}/end": {"post": operation(
            "End the conversation (idempotent)", {"200": json_response(Ended, "the conversation's status")},
            *common, security=token)},
        f"{base}/{{conv_id}}/rating": {"post": operation(
            "Rate the conversation (409 until the bot has answered); a rating may be corrected within the window",
            {"200": json_response(RatingOut, "the stored rating")}, *with_body, *common, 409,
            body=json_body(RatingIn), security=token)},
    }
    models = [StartIn, MessageIn, RatingIn, ConversationCreated, Reply, Queued, Delta, Ended, RatingOut, Transcript]
    schemes = {"customerToken": {"type": "http", "scheme": "bearer",
                                 "description": "the token returned when the conversation started"}}
    return Section(paths, models, schemes)
