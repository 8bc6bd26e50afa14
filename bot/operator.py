"""The operator console: retraining schedules, "train now", runs with live progress (and why a queued
one waits), the training workers' and schedulers' liveness, adapters
(promote, canary, roll back, canary share), CSAT per adapter version, and handoffs to a person
per version (handoff and resolution rates, CSAT of bot-only and handed-off conversations).

``/operator`` is the page; ``/api/operator/...`` is its JSON API. Every route needs a signed-in
operator or admin; writes need the session's CSRF token.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from pydantic import Field

from bot.sessions import console_operation, current_user, guard
from bot.charts import BUCKETS, compare_metrics, csat_by_version, handoffs_by_version
from bot.errors import ApiError
from bot.schemas import Body
from bot.services import services
from bot.validation import parse_body, query_number
from feedback_store.rating_weights import WeightRule
from feedback_store.queue_waits import queue_waits
from feedback_store.records import AdapterVersion, Conversation, Schedule, TrainingRun
from feedback_store.schedules import HORIZON_YEARS, check_cron, next_runs

bp = Blueprint("operator", __name__)
bp.before_request(guard("operator"))

CSAT_MAX_CONVERSATIONS = 20_000
CSAT_PAGE = 1000
MIN_WINDOW_DAYS = 1 / 24  # one hour
MAX_WINDOW_DAYS = 365.0
MAX_RUNS_LISTED = 200


class ScheduleIn(Body):
    cron: str = Field(min_length=1, max_length=120, description="5-field cron, UTC")
    enabled: bool = True


class EnabledIn(Body):
    enabled: bool


class ReasonIn(Body):
    reason: str = Field(default="", max_length=500)


class RollbackIn(Body):
    reason: str = Field(min_length=1, max_length=500)
    to_version: str | None = None


class ShareIn(Body):
    share: float = Field(ge=0.0, le=1.0, description="share of new conversations given the canary")


def _schedule(schedule: Schedule) -> dict[str, Any]:
    """A schedule with its next three runs, and a ``problem`` when it never fires (stored before that was
    refused)."""
    runs = [t.isoformat() for t in next_runs(schedule.cron, 3)]
    problem = None if runs else f"never fires within {HORIZON_YEARS} years: delete it and add a valid one"
    return {**schedule.model_dump(), "next_runs": runs, "problem": problem}


def _run(run: TrainingRun) -> dict[str, Any]:
    return run.model_dump()


@bp.get("/operator")
def console() -> str:
    """The operator console page (its sections are filled by console.operator.js)."""
    return render_template("operator_console.html", user=current_user())


# schedules ------------------------------------------------------------------------------

@bp.get("/api/operator/schedules")
def schedules() -> Response:
    """Every schedule with its next three run times (UTC), and the stored ones that cannot be read."""
    schedules, unreadable = services().store.schedules.read_all()
    return jsonify(schedules=[_schedule(s) for s in schedules],
                   unreadable=[{"id": i, "problem": problem} for i, problem in unreadable.items()])


@bp.get("/api/operator/cron-preview")
def cron_preview() -> Response:
    """Check a cron expression as it is typed: its next three run times, or why it is invalid."""
    checked = check_cron(request.args.get("cron", ""))
    return jsonify(cron=checked, next_runs=[t.isoformat() for t in next_runs(checked, 3)])


@bp.post("/api/operator/schedules")
def add_schedule() -> tuple[Response, int]:
    """Add a schedule; a cron expression that is malformed or never fires is refused with 422."""
    body = parse_body(ScheduleIn)
    return jsonify(_schedule(services().store.schedules.add(body.cron, body.enabled))), 201


@bp.patch("/api/operator/schedules/<schedule_id>")
def set_schedule_enabled(schedule_id: str) -> Response:
    """Enable or disable a schedule."""
    body = parse_body(EnabledIn)
    return jsonify(_schedule(services().store.schedules.set_enabled(schedule_id, body.enabled)))


@bp.delete("/api/operator/schedules/<schedule_id>")
def delete_schedule(schedule_id: str) -> Response:
    services().store.schedules.delete(schedule_id)
    return jsonify(deleted=schedule_id)


# runs -----------------------------------------------------------------------------------

@bp.post("/api/operator/train")
def train_now() -> tuple[Response, int]:
    """Queue a training round now; the run starts when a worker takes it."""
    return jsonify(_run(services().store.training.enqueue_round("console"))), 202


@bp.get("/api/operator/runs")
def runs() -> Response:
    """The newest runs first."""
    limit = query_number("limit", 50, 1, MAX_RUNS_LISTED)
    return jsonify(runs=[_run(r) for r in services().store.runs.list(limit)])


@bp.get("/api/operator/runs/<run_id>/progress")
def run_progress(run_id: str) -> Response:
    """The run and its progress events after the stream id ``after`` (poll with the returned ``last``)."""
    store = services().store
    run = store.runs.get(run_id)
    after = request.args.get("after", "-")
    events = store.runs.progress(run_id, after=after)
    return jsonify(run=_run(run), events=[{"id": eid, **fields} for eid, fields in events],
                   last=events[-1][0] if events else after)


@bp.get("/api/operator/liveness")
def liveness() -> Response:
    """The training workers and schedulers by their last heartbeat (alive or stale, its age, what they do),
    and why each queued run waits."""
    store = services().store
    beats = store.heartbeats.list()
    workers = [b for b in beats if b.heartbeat.role == "worker"]
    waits = queue_waits(store, store.runs.list(MAX_RUNS_LISTED), workers)
    return jsonify(interval_s=store.heartbeats.interval_s, stale_s=store.heartbeats.stale_s,
                   workers=[b.to_dict() for b in workers],
                   schedulers=[b.to_dict() for b in beats if b.heartbeat.role == "scheduler"],
                   queued=[w.to_dict() for w in waits])


# adapters -------------------------------------------------------------------------------

@bp.get("/api/operator/adapters")
def adapters() -> Response:
    """Every adapter with its metrics, live CSAT, and its metrics' differences from the active one's."""
    store = services().store
    active, canary = store.adapters.active(), store.adapters.canary()
    listed = store.adapters.list()
    baseline = next((a.metrics for a in listed if a.version == active), {})
    live = csat_by_version(_recent_conversations(30), BUCKETS["day"], WeightRule.of(services().settings))["totals"]
    return jsonify(active=active, canary=canary, canary_share=store.adapters.canary_share(),
                   base_csat=live.get("base"),
                   adapters=[_adapter(a, baseline, live.get(a.version), a.version == active) for a in listed])


def _adapter(adapter: AdapterVersion, baseline: dict[str, Any], csat: dict | None, is_active: bool) -> dict[str, Any]:
    out = adapter.model_dump(exclude={"path"})
    out.update(live_csat=csat, vs_active=None if is_active else compare_metrics(adapter.metrics, baseline))
    return out


@bp.post("/api/operator/adapters/<version>/promote")
def promote(version: str) -> Response:
    """Make ``version`` active: new conversations are pinned to it once the bots have loaded it."""
    reason = parse_body(ReasonIn, optional=True).reason or f"promoted by {current_user().name}"
    return jsonify(services().store.adapters.promote(version, reason).model_dump(exclude={"path"}))


@bp.post("/api/operator/adapters/<version>/canary")
def send_to_canary(version: str) -> Response:
    """Serve ``version`` to the canary share of new conversations."""
    reason = parse_body(ReasonIn, optional=True).reason or f"sent to canary by {current_user().name}"
    return jsonify(services().store.adapters.send_to_canary(version, reason).model_dump(exclude={"path"}))


@bp.post("/api/operator/rollback")
def rollback() -> Response:
    """Reject the active adapter and reactivate its parent (or ``to_version``)."""
    body = parse_body(RollbackIn)
    store = services().store
    rolled_back = store.adapters.active()
    active = store.adapters.rollback(f"{body.reason} (by {current_user().name})", body.to_version)
    return jsonify(rolled_back=rolled_back, active=active)


@bp.put("/api/operator/canary-share")
def set_canary_share() -> Response:
    """Set the share (0-1) of new conversations that get the canary adapter."""
    body = parse_body(ShareIn)
    services().store.adapters.set_canary_share(body.share)
    return jsonify(canary_share=body.share)


# CSAT over time -------------------------------------------------------------------------

@bp.get("/api/operator/csat")
def csat() -> Response:
    """Mean CSAT with 95% intervals per adapter version and hour or day, over the last ``days``."""
    bucket = request.args.get("bucket", "day")
    if bucket not in BUCKETS:
        raise ApiError(422, "invalid_request", f"bucket must be one of {sorted(BUCKETS)}")
    days = query_number("days", 14.0, MIN_WINDOW_DAYS, MAX_WINDOW_DAYS)
    return jsonify(bucket=bucket, bucket_s=BUCKETS[bucket], days=days,
                   **csat_by_version(_recent_conversations(days), BUCKETS[bucket], WeightRule.of(services().settings)))


@bp.get("/api/operator/handoffs")
def handoffs() -> Response:
    """Per adapter version over the last ``days``: handoff rate, resolution rate, and CSAT of bot-only and
    handed-off conversations, each with its 95% interval."""
    days = query_number("days", 14.0, MIN_WINDOW_DAYS, MAX_WINDOW_DAYS)
    return jsonify(days=days, versions=handoffs_by_version(_recent_conversations(days),
                                                           WeightRule.of(services().settings)))


def _recent_conversations(days: float) -> list[Conversation]:
    """Conversations started in the last ``days`` (newest first, at most CSAT_MAX_CONVERSATIONS)."""
    conversations = services().store.conversations
    since, until, seen, out = time.time() - days * 86400, None, set(), []
    while len(out) < CSAT_MAX_CONVERSATIONS:
        fetched = conversations.recent(CSAT_PAGE, since=since, until=until)
        page = [c for c in fetched if c.id not in seen]
        out.extend(page)
        seen.update(c.id for c in page)
        if len(fetched) < CSAT_PAGE or not page:
            return out
        until = page[-1].created_at
    return out


def openapi_section():
    """The operator API's part of /openapi.json."""
    from bot.openapi import Section, query_parameter

    o, op = "/api/operator", console_operation
    not_now = "409 when the adapter's status does not allow it (an active adapter cannot become canary)."
    return Section({
        f"{o}/schedules": {"get": op("Retraining schedules with their next three run times (UTC)"),
                           "post": op("Add a schedule; the cron expression is validated", "201",
                                      body=ScheduleIn, write=True)},
        f"{o}/schedules/{{schedule_id}}": {"patch": op("Enable or disable a schedule", body=EnabledIn, write=True),
                                           "delete": op("Delete a schedule", write=True)},
        f"{o}/cron-preview": {"get": {**op("Check a cron expression: its next three run times"),
                                      "parameters": [query_parameter("cron", type="string", maxLength=120)]}},
        f"{o}/train": {"post": op("Queue a training round now", "202", write=True)},
        f"{o}/runs": {"get": {**op("Training runs, newest first"), "parameters": [query_parameter(
                              "limit", type="integer", minimum=1, maximum=MAX_RUNS_LISTED, default=50)]}},
        f"{o}/runs/{{run_id}}/progress": {"get": {**op("A run and its progress events"), "parameters": [
            query_parameter("after", "'-' (the default) for the first events, then the 'last' the previous answer "
                                     "returned", type="string", maxLength=41)]}},
        f"{o}/liveness": {"get": op("Training workers and schedulers by their last heartbeat (alive or stale, "
                                    "its age, what each does) and why each queued run waits")},
        f"{o}/adapters": {"get": op("Adapters with status, metrics, live CSAT and the difference from the active one")},
        f"{o}/adapters/{{version}}/promote": {"post": op("Make an adapter active", body=ReasonIn, write=True,
                                                         also=(409,), description=not_now)},
        f"{o}/adapters/{{version}}/canary": {"post": op("Send an adapter to canary", body=ReasonIn, write=True,
                                                        also=(409,), description=not_now)},
        f"{o}/rollback": {"post": op("Reject the active adapter and reactivate its parent (or to_version)",
                                     body=RollbackIn, write=True, also=(409,),
                                     description="409 when the base model is active, or to_version cannot be.")},
        f"{o}/canary-share": {"put": op("Set the share of new conversations given the canary",
                                        body=ShareIn, write=True)},
        f"{o}/csat": {"get": {**op("Mean CSAT with 95% intervals per adapter version and day or hour"),
                              "parameters": [query_parameter("bucket", type="string", enum=sorted(BUCKETS)),
                                             query_parameter("days", type="number", minimum=MIN_WINDOW_DAYS,
                                                             maximum=MAX_WINDOW_DAYS, default=14)]}},
        f"{o}/handoffs": {"get": {**op("Handoff and resolution rates and CSAT of bot-only and handed-off "
                                       "conversations per adapter version, with 95% intervals"),
                                  "parameters": [query_parameter("days", type="number", minimum=MIN_WINDOW_DAYS,
                                                                 maximum=MAX_WINDOW_DAYS, default=14)]}},
    }, [ScheduleIn, EnabledIn, ReasonIn, RollbackIn, ShareIn])
