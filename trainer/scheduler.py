"""The scheduler: every few seconds it enqueues a training round for each cron schedule that is
due, and applies the live canary decision; every hour it prunes the conversations past their
retention period (``feedback_store.retention``). While it runs it writes a heartbeat
(``feedback_store.heartbeats``) saying what it does."""

from __future__ import annotations

import time
from typing import Any, Callable

from feedback_store import FeedbackStore
from feedback_store.records import TrainingRun

from trainer.canary import CanaryDecision, check_canary
from trainer.config import GateConfig

PRUNE_EVERY_S = 3600.0


def tick(store: FeedbackStore, gate: GateConfig, round_config: dict[str, Any] | None = None,
         now: float | None = None) -> tuple[list[TrainingRun], CanaryDecision | None]:
    """One pass: enqueue a round per due schedule, each recording ``round_config`` (how it trains: the worker
    refuses a recorded gate, ``trainer.round_config.run_config``); decide on the canary. Returns what it did."""
    runs = [store.training.enqueue_round(trigger=f"schedule:{s.id}", config=round_config)
            for s in store.schedules.due(now)]
    return runs, check_canary(store, gate)


def loop(store: FeedbackStore, gate: GateConfig, interval_s: float, round_config: dict[str, Any] | None = None,
         echo: Callable[[str], None] = print, once: bool = False) -> None:
    """Call ``tick`` every ``interval_s`` seconds (once with ``once``), and prune at the first pass and every
    ``PRUNE_EVERY_S`` after, echoing what it enqueues, decides or prunes; its heartbeat says which it does."""
    next_prune = time.monotonic()
    checking = every = f"checking the schedules and the canary every {interval_s:g} s"
    with store.heartbeats.start("scheduler", checking) as heartbeat:
        while True:
            runs, decision = tick(store, gate, round_config)
            if runs:
                checking = f"{every}; last enqueued run {runs[-1].id}"
                heartbeat.set(checking)
            for run in runs:
                echo(f"enqueued training run {run.id} ({run.trigger})")
            if decision is not None and decision.action != "wait":
                echo(f"canary: {decision.action}: {decision.reason}")
            if time.monotonic() >= next_prune:
                heartbeat.set("pruning the conversations past their retention period")
                report = store.retention.prune()
                heartbeat.set(checking)
                if report.expired:
                    echo(f"retention: {report.summary()}")
                next_prune = time.monotonic() + PRUNE_EVERY_S
            if once:
                return
            time.sleep(interval_s)
