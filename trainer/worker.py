"""The training worker: an RQ worker on the training queue that runs each round in its own process.

It is an RQ ``SimpleWorker`` (no fork per job): the model libraries are imported once, and
killing the worker kills the round with it; the run lock's expiry then lets the next round run
and clean up (``trainer.round.recover``).
"""

from __future__ import annotations

from rq import SimpleWorker

from feedback_store import FeedbackStore


def make_worker(store: FeedbackStore, name: str | None = None) -> SimpleWorker:
    """A worker on ``store``'s training queue, with RQ's own (non-decoding) Redis connection."""
    return SimpleWorker([store.training.queue], connection=store.training.connection, name=name)


def work(store: FeedbackStore, burst: bool = False) -> bool:
    """Process training jobs until stopped (or, with ``burst``, until the queue is empty)."""
    return make_worker(store).work(burst=burst, with_scheduler=False)
