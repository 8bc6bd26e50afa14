"""RQ job functions. ``feedback_store.training_queue`` enqueues them by import path, so the bot
and the scheduler never import the trainer; only the worker process does."""

from __future__ import annotations

from typing import Any


def run_round(run_id: str) -> dict[str, Any]:
    """Run the queued training round ``run_id`` with this process's settings; returns its outcome."""
    from feedback_store import FeedbackStore
    from loopdesk.config import load_settings
    from trainer.round import run_round as run_training_round

    settings = load_settings()
    store = FeedbackStore.from_settings(settings, announce=False)
    run = run_training_round(settings, store, run_id=run_id, show_progress=False)
    return {"run": run.id, "status": run.status, "adapter_version": run.adapter_version}
