"""The training worker: an RQ worker on the training queue that runs each round in its own process.

It is an RQ ``SimpleWorker`` (no fork per job): the model libraries are imported once, and
killing the worker kills the round with it; the run lock's expiry then lets the next round run
and clean up (``trainer.round.recover``). While it works it writes a heartbeat (``feedback_store.heartbeats``)
under the RQ worker's own name.
"""

from __future__ import annotations

from rq import SimpleWorker

from feedback_store import FeedbackStore
from loopdesk.config import Settings
from trainer.jobs import WAITING, use_worker_config
from trainer.round_config import RoundConfig


def make_worker(store: FeedbackStore, name: str | None = None) -> SimpleWorker:
    """A worker on ``store``'s training queue, with RQ's own (non-decoding) Redis connection, reading jobs
    as the queue writes them (JSON, ``TrainingJob``: a training round and nothing else)."""
    queue = store.training.queue
    return SimpleWorker([queue], connection=store.training.connection, name=name, job_class=queue.job_class,
                        serializer=queue.serializer)


def work(store: FeedbackStore, settings: Settings, round_config: RoundConfig, burst: bool = False) -> bool:
    """Process training jobs with these settings and this round config (the worker's own; a queued run's
    recorded overrides go over it) until stopped, or with ``burst`` until the queue is empty."""
    with store.heartbeats.start("worker", WAITING) as heartbeat:
        use_worker_config(settings, round_config, heartbeat)
        return make_worker(store, name=heartbeat.id).work(burst=burst, with_scheduler=False)
