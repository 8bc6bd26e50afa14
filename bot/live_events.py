"""Server-sent events, and the live stream of one conversation that the widget (agents' replies) and
the inbox (the customer's messages) read.

A conversation stream sends ``status`` events (data: ``StatusEvent``; the first one at once) and
``turn`` events (data: ``TurnOut``) for the turns after ``?after=<index>`` whose role its reader
follows, and a keep-alive comment every ``KEEPALIVE_S`` (which also notices a reader that left). It
ends when the conversation reaches a status its reader stops at, or after ``STREAM_MAX_S``; the
reader then reconnects with the last index it saw.
"""

from __future__ import annotations

import time
from contextlib import closing
from typing import Iterable, Iterator

from flask import Response
from pydantic import BaseModel

from bot.availability import handoff_state
from bot.openapi import query_parameter
from bot.schemas import StatusEvent, TurnOut
from bot.services import Services
from bot.validation import query_number
from feedback_store.ids import MAX_INDEX
from feedback_store.records import AgentTurn, Turn

KEEPALIVE_S = 15.0
STREAM_MAX_S = 300.0
AFTER_PARAMETER = [query_parameter("after", "the last turn index the reader has (-1: none)", type="integer",
                                   minimum=-1, maximum=MAX_INDEX, default=-1)]


def after_index() -> int:
    """The ``?after=`` turn index of a live stream (-1 when absent); anything but a whole number from -1 to
    ``MAX_INDEX`` is a 422."""
    return query_number("after", -1, -1, MAX_INDEX)


def sse_event(event: str, data: BaseModel) -> str:
    """One server-sent event with JSON data."""
    return f"event: {event}\ndata: {data.model_dump_json()}\n\n"


def sse_response(events: Iterable[str]) -> Response:
    """A streamed ``text/event-stream`` response that no proxy buffers."""
    return Response(events, mimetype="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                  "X-Accel-Buffering": "no"})


def turn_out(turn: Turn) -> TurnOut:
    """A turn as the APIs show it (an agent's with the name the customer sees)."""
    return TurnOut(index=turn.index, role=turn.role, text=turn.text, created_at=turn.created_at,
                   agent_name=turn.agent_name if isinstance(turn, AgentTurn) else None)


def conversation_stream(svc: Services, conv_id: str, after: int, roles: frozenset[str],
                        stop_at: frozenset[str]) -> Iterator[str]:
    """The events of conversation ``conv_id`` (which exists) after turn ``after``: turns of ``roles``,
    every status, until a status in ``stop_at`` or ``STREAM_MAX_S``."""
    deadline = time.monotonic() + STREAM_MAX_S
    with closing(svc.store.handoffs.follow(conv_id, after, KEEPALIVE_S)) as changes:
        for change in changes:
            if change is None:
                yield ": keep-alive\n\n"
            elif change.turn is not None:
                if change.turn.role in roles:
                    yield sse_event("turn", turn_out(change.turn))
            else:
                yield sse_event("status", StatusEvent(status=change.conversation.status,
                                                      handoff=handoff_state(svc, change.handoff)))
                if change.conversation.status in stop_at:
                    return
            if time.monotonic() > deadline:
                return
