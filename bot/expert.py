"""The expert console: the annotation queue, transcripts with per-turn annotations (and the help
articles each reply saw), JSONL export.

``/expert`` is the page; ``/api/expert/...`` is the JSON API it (and the simulated expert) use.
Every route needs a signed-in expert or admin; writes need the session's CSRF token.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time as dtime, timezone
from itertools import combinations
from typing import Any, Iterator

from flask import Blueprint, Response, jsonify, render_template, request
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from bot.sessions import console_operation, current_user, guard
from bot.schemas import Body
from bot.services import services
from bot.validation import invalid_fields, parse_body
from feedback_store.annotations import QueueFilter
from feedback_store.feedback_export import FeedbackExport
from feedback_store.records import AgentTurn, Annotation, BotTurn, Conversation

bp = Blueprint("expert", __name__)
bp.before_request(guard("expert"))

TAGS = ("wrong_info", "rude", "unhelpful", "off_topic", "too_long", "great")
EXPORT_PAGE = 200
SCORE_RANGE = 4  # scores run from -2 to +2
MAX_DATE_CHARS = 40


class QueueQuery(BaseModel):
    """Query string of the queue; dates are epoch seconds or ISO dates (``until`` includes its day)."""

    csat_min: int | None = Field(default=None, ge=1, le=5)
    csat_max: int | None = Field(default=None, ge=1, le=5)
    since: float | None = Field(default=None, allow_inf_nan=False)
    until: float | None = Field(default=None, allow_inf_nan=False)
    adapter_version: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=32)
    include_annotated: bool = True
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=25, ge=1, le=100)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _timestamp(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str) or not value.strip():
            return value or None
        if len(value) > MAX_DATE_CHARS:
            raise ValueError(f"a date is epoch seconds or an ISO date (at most {MAX_DATE_CHARS} characters)")
        try:
            return float(value)
        except ValueError:
            pass
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = dtime.max if info.field_name == "until" else dtime.min
            return datetime.combine(day, moment, tzinfo=timezone.utc).timestamp()
        parsed = datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


class AnnotationIn(Body):
    """One expert's judgement of one bot turn."""

    score: int = Field(ge=-2, le=2, description="-2 (harmful) … +2 (excellent)")
    tags: list[str] = Field(default_factory=list, max_length=16)
    corrected_reply: str = ""
    note: str = ""


def _query() -> QueueQuery:
    args = {k: v for k, v in request.args.items() if v != ""}
    try:
        return QueueQuery.model_validate(args)
    except ValidationError as exc:
        raise invalid_fields(exc, "query") from None


def agreement(annotations: list[Annotation]) -> dict[str, Any] | None:
    """How far several experts agree on a turn: score mean, spread and mean pairwise agreement.

    Pairwise agreement of two scores is ``1 - |a - b| / 4`` (1: same score, 0: opposite ends).
    """
    scores = [a.score for a in annotations]
    if len(scores) < 2:
        return None
    pairs = list(combinations(scores, 2))
    return {
        "n": len(scores),
        "mean": round(sum(scores) / len(scores), 3),
        "spread": max(scores) - min(scores),
        "pairwise": round(sum(1 - abs(a - b) / SCORE_RANGE for a, b in pairs) / len(pairs), 3),
        "exact": round(sum(a == b for a, b in pairs) / len(pairs), 3),
    }


def conversation_summary(conv: Conversation) -> dict[str, Any]:
    """What the queue shows of a conversation."""
    return {"id": conv.id, "csat": conv.csat, "adapter_version": conv.adapter_version,
            "created_at": conv.created_at, "n_turns": conv.n_turns, "status": conv.status}


@bp.get("/expert")
def console() -> str:
    """The expert console page (the queue and transcript are loaded by console.expert.js)."""
    versions = [a.version for a in services().store.adapters.list()]
    return render_template("expert_console.html", user=current_user(), tags=TAGS, versions=versions)


@bp.get("/api/expert/queue")
def queue() -> Response:
    """Ended conversations to annotate: unannotated first, lowest CSAT first, filtered; the counts follow the
    CSAT, time, version and tag filters (``include_annotated`` shapes the list only)."""
    q = _query()
    flt = QueueFilter(csat_min=q.csat_min, csat_max=q.csat_max, since=q.since, until=q.until,
                      adapter_version=q.adapter_version, tag=q.tag, include_annotated=q.include_annotated)
    page = services().store.annotations.queue(flt, offset=q.offset, limit=q.limit)
    return jsonify(conversations=[conversation_summary(c) for c in page.conversations],
                   unannotated=page.unannotated, annotated=page.annotated, counts_complete=page.counts_complete)


@bp.get("/api/expert/conversations/<conv_id>")
def conversation(conv_id: str) -> Response:
    """A transcript with every bot turn's annotations, the experts' agreement, the help articles it saw
    and whether the model generated it (``source``: ``model``, ``fallback`` or ``handoff``); agents' turns
    name their agent."""
    store = services().store
    conv = store.conversations.get(conv_id)
    by_turn = store.annotations.for_conversation(conv_id)
    turns = []
    for turn in store.conversations.turns(conv_id):
        out: dict[str, Any] = {"index": turn.index, "role": turn.role, "text": turn.text,
                               "created_at": turn.created_at}
        if isinstance(turn, BotTurn):
            annotations = by_turn.get(turn.index, [])
            out.update(adapter_version=turn.adapter_version, finished=turn.finished, source=turn.source,
                       articles=[a.model_dump() for a in turn.articles],
                       annotations=[a.model_dump() for a in annotations], agreement=agreement(annotations))
        elif isinstance(turn, AgentTurn):
            out.update(agent_id=turn.agent_id, agent_name=turn.agent_name)
        turns.append(out)
    return jsonify(conversation={**conversation_summary(conv), "csat_comment": conv.csat_comment,
                                 "ended_at": conv.ended_at, "meta": conv.meta},
                   turns=turns)


@bp.post("/api/expert/conversations/<conv_id>/turns/<index:index>/annotations")
def annotate(conv_id: str, index: int) -> tuple[Response, int]:
    """Store (or replace) the signed-in expert's annotation of bot turn ``index``."""
    body = parse_body(AnnotationIn)
    stored = services().store.annotations.annotate(
        conv_id, index, current_user().name, body.score, tags=body.tags,
        corrected_reply=body.corrected_reply, note=body.note)
    return jsonify(stored.model_dump()), 201


@bp.get("/api/expert/export.jsonl")
def export() -> Response:
    """Every annotation as one JSON line, with the turn, the customer's message and the CSAT."""
    return Response(_export_lines(services().store.feedback), mimetype="application/x-ndjson",
                    headers={"Content-Disposition": 'attachment; filename="annotations.jsonl"'})


def _export_lines(feedback: FeedbackExport) -> Iterator[str]:
    until, after = feedback.watermark(), 0
    while after < until:
        page, reached = feedback.export(after=after, until=until, limit=EXPORT_PAGE, include_fallbacks=True)
        for turn in page:
            for ann in turn.annotations:
                yield json.dumps({
                    **ann.model_dump(), "bot_reply": turn.turn.text, "customer_text": turn.customer_text,
                    "adapter_version": turn.turn.adapter_version, "csat": turn.csat,
                }) + "\n"
        if reached <= after:
            return
        after = reached


def openapi_section():
    """The expert API's part of /openapi.json (sign-in is in ``bot.auth``)."""
    from bot.openapi import Section, query_parameter

    e = "/api/expert"
    when = {"type": "string", "maxLength": MAX_DATE_CHARS, "description": "epoch seconds or an ISO date"}
    queue_params = [query_parameter(name, **schema) for name, schema in (
        ("csat_min", {"type": "integer", "minimum": 1, "maximum": 5}),
        ("csat_max", {"type": "integer", "minimum": 1, "maximum": 5}), ("since", when), ("until", when),
        ("adapter_version", {"type": "string", "maxLength": 64}), ("tag", {"type": "string", "maxLength": 32}),
        ("include_annotated", {"type": "boolean", "default": True}), ("offset", {"type": "integer", "minimum": 0}),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 25}))]
    queue_op = console_operation("Conversations to annotate: unannotated first, lowest CSAT first, with counts",
                                 description="Dates are epoch seconds or ISO dates; until includes its day. The counts (unannotated, "
                                             "annotated) follow every filter but include_annotated; counts_complete is "
                                             "false when a time or tag filter matched more entries than one request checks.")
    export_op = console_operation("Every annotation, one JSON object a line")
    export_op["responses"]["200"]["content"] = {"application/x-ndjson": {"schema": {"type": "string"}}}
    return Section({
        f"{e}/queue": {"get": {**queue_op, "parameters": queue_params}},
        f"{e}/conversations/{{conv_id}}": {"get": console_operation(
            "A transcript: every bot turn with its annotations, the experts' agreement, the help articles "
            "it saw and its source (model or fallback)")},
        f"{e}/conversations/{{conv_id}}/turns/{{index}}/annotations": {"post": console_operation(
            "Annotate a bot turn (replaces this expert's earlier annotation of it)", "201",
            body=AnnotationIn, write=True)},
        f"{e}/export.jsonl": {"get": export_op},
    }, [AnnotationIn])
