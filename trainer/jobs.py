"""RQ job functions. ``feedback_store.training_queue`` enqueues them by import path, so the bot
and the scheduler never import the trainer; only the worker process does. The worker's heartbeat says
which run it works on while a job runs."""

from __future__ import annotations

from typing import Any

from feedback_store.heartbeats import ProcessHeartbeat
from loopdesk.config import Settings
from trainer.round_config import RoundConfig

WAITING = "waiting for a queued run"
_worker: tuple[Settings, RoundConfig, ProcessHeartbeat] | None = None


def use_worker_config(settings: Settings, round_config: RoundConfig, heartbeat: ProcessHeartbeat) -> None:
    """Run this process's jobs with the worker's own settings and round config, telling ``heartbeat`` which
    run it works on (``trainer.worker.work``)."""
    global _worker
    _worker = (settings, round_config, heartbeat)


def run_round(run_id: str) -> dict[str, Any]:
    """Run the queued training round ``run_id`` with this worker's settings and round config (the run's
    recorded overrides over it); returns its outcome."""
    from feedback_store import FeedbackStore
    from trainer.round import run_round as run_training_round

    if _worker is None:
        raise RuntimeError("trainer.jobs.run_round runs in a training worker (trainer.worker.work), "
                           "which gives it the worker's settings and round config")
    settings, own, heartbeat = _worker
    heartbeat.set(f"running run {run_id}", run_id=run_id)
    try:
        store = FeedbackStore.from_settings(settings, announce=False)
        run = run_training_round(settings, store, run_id=run_id, config=own, show_progress=False)
    finally:
        heartbeat.set(WAITING)
    return {"run": run.id, "status": run.status, "adapter_version": run.adapter_version}
