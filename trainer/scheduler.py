"""The scheduler: every few seconds it enqueues a training round for each cron schedule that is
due, and applies the live canary decision."""

from __future__ import annotations

import time
from typing import Any, Callable

from feedback_store import FeedbackStore
from feedback_store.records import TrainingRun

from trainer.canary import CanaryDecision, check_canary
from trainer.config import GateConfig


def tick(store: FeedbackStore, gate: GateConfig, round_config: dict[str, Any] | None = None,
         now: float | None = None) -> tuple[list[TrainingRun], CanaryDecision | None]:
    """One pass: enqueue a round per due schedule, each recording ``round_config`` (how it trains: the worker
    refuses a recorded gate, ``trainer.round_config.run_config``); decide on the canary. Returns what it did."""
    runs = [store.training.enqueue_round(trigger=f"schedule:{s.id}", config=round_config)
            for s in store.schedules.due(now)]
    return runs, check_canary(store, gate)


def loop(store: FeedbackStore, gate: GateConfig, interval_s: float, round_config: dict[str, Any] | None = None,
         echo: Callable[[str], None] = print, once: bool = False) -> None:
    """Call ``tick`` every ``interval_s`` seconds (once with ``once``), echoing what it enqueues or decides."""
    while True:
        runs, decision = tick(store, gate, round_config)
        for run in runs:
            echo(f"enqueued training run {run.id} ({run.trigger})")
        if decision is not None and decision.action != "wait":
            echo(f"canary: {decision.action}: {decision.reason}")
        if once:
            return
        time.sleep(interval_s)
