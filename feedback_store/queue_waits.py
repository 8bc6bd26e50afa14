"""Why each queued training run waits, from what the store knows: the training queue's order, the jobs a
worker has taken, the workers' heartbeats, the runs that are running and the run lock.

One run trains at a time (the run lock): a worker that takes a run while the lock is held fails it, so
"the lock is held" is a reason worth telling even while a worker is free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from feedback_store.errors import NotFoundError
from feedback_store.heartbeats import Liveness
from feedback_store.records import TrainingRun

if TYPE_CHECKING:
    from feedback_store.store import FeedbackStore

WaitReason = Literal["starting", "not_in_queue", "no_worker", "behind_run", "lock_held", "next"]
START_WORKER = "start one with: loopdesk worker"
MAX_EXPLAINED = 200


@dataclass(frozen=True)
class Wait:
    """Why the queued run ``run_id`` has not started: a ``reason`` code, the ``message`` an operator reads,
    the run it waits ``behind`` (if one), and how many queued runs are ``ahead`` of it."""

    run_id: str
    reason: WaitReason
    message: str
    behind: str | None = None
    ahead: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _worker_name(worker: Liveness) -> str:
    return f"worker {worker.heartbeat.id} on {worker.heartbeat.host} (pid {worker.heartbeat.pid})"


def _ahead(count: int) -> str:
    return "" if not count else f"; {count} queued run{'s' if count > 1 else ''} ahead of it"


def explain(run: TrainingRun, queue_order: list[str], started: set[str], workers: list[Liveness],
            running: list[TrainingRun], lock_expires_in: float | None) -> Wait:
    """Why ``run`` (queued) waits, given the runs in queue order, the runs whose jobs a worker has taken,
    the workers' heartbeats, the running runs and the seconds until the run lock expires (None: free)."""
    alive = [w for w in workers if w.alive]
    taker = next((w for w in alive if w.heartbeat.run_id == run.id), None)
    if taker or (run.id in started and alive):
        return Wait(run.id, "starting", f"{_worker_name(taker) if taker else 'a worker'} has taken it and is "
                    "starting it")
    if run.id not in queue_order:
        return Wait(run.id, "not_in_queue", "its job is not in the training queue, so no worker will take it "
                    "(the queue was emptied, its job failed before the round began, or its worker stopped "
                    "while taking it): press Train now to queue a new run")
    ahead = queue_order.index(run.id)
    working = [w for w in alive if w.heartbeat.run_id]
    busy = {w.heartbeat.run_id for w in working}
    holder = next((r.id for r in running if r.id not in busy), None)
    lock = ""  # the lock held other than by a live worker's run: a worker taking this run now would fail it
    if lock_expires_in is not None and (holder or not busy):
        held = f"by run {holder}, which no live worker runs" if holder else "though no run is running"
        lock = (f"the training lock is held {held} (a loopdesk train in the foreground, or a worker that stopped "
                f"mid-round); it expires in {lock_expires_in:.0f} s, and a worker that takes this run before then "
                "fails it")
    if not alive:
        last = min((w.age_s for w in workers), default=None)
        heard = "" if last is None else f" (the last one was heard from {last:.0f} s ago)"
        return Wait(run.id, "no_worker", f"no worker alive{heard}: it waits until one starts ({START_WORKER})"
                    + (f"; {lock}" if lock else "") + _ahead(ahead), behind=holder, ahead=ahead)
    if len(working) == len(alive):
        behind = working[0].heartbeat.run_id
        return Wait(run.id, "behind_run", f"waiting behind run {behind}, which {_worker_name(working[0])} is "
                    "running" + _ahead(ahead), behind=behind, ahead=ahead)
    if lock:
        return Wait(run.id, "lock_held", lock + _ahead(ahead), behind=holder, ahead=ahead)
    return Wait(run.id, "next", "a worker is free and takes it " + ("next" if not ahead else
                f"after the {ahead} queued run{'s' if ahead > 1 else ''} ahead of it"), ahead=ahead)


def queue_waits(store: "FeedbackStore", runs: list[TrainingRun], workers: list[Liveness]) -> list[Wait]:
    """Why each queued run of ``runs``, and each other run in the queue, waits (queue order first), given the
    workers' heartbeats (``store.heartbeats.list("worker")``)."""
    order = store.training.queued_run_ids()
    known = {r.id: r for r in runs}
    queued = [known.get(run_id) or _run(store, run_id) for run_id in order[:MAX_EXPLAINED]]
    queued += [r for r in runs if r.status == "queued" and r.id not in order]
    started = set(store.training.started_run_ids())
    running = [r for r in runs if r.status == "running"]
    lock = store.runs.lock_expires_in()
    return [explain(r, order, started, workers, running, lock) for r in queued if r and r.status == "queued"]


def _run(store: "FeedbackStore", run_id: str) -> TrainingRun | None:
    """The run a queued job names, or None when its record is gone (nothing to explain)."""
    try:
        return store.runs.get(run_id)
    except NotFoundError:
        return None
