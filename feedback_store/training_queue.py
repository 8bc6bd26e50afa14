"""The training job queue (RQ): how the console, scheduler and CLI ask for a training round.

The job is referenced by its import path, so callers (the bot, the scheduler) never import
the trainer; only the worker process does.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue

from feedback_store.records import TrainingRun

ROUND_JOB = "trainer.jobs.run_round"
JOB_TIMEOUT_S = 6 * 3600


def rq_connection(client: redis.Redis) -> redis.Redis:
    """A client on the same server without response decoding, as RQ requires."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs["decode_responses"] = False
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs))


class TrainingQueue:
    """Creates the run record (status queued) and enqueues its job, run id as the job's argument."""

    def __init__(self, client: redis.Redis, keys, runs):
        self._keys = keys
        self._runs = runs
        self.connection = rq_connection(client)
        self.queue = Queue(keys.rq_queue_name(), connection=self.connection)

    def enqueue_round(self, trigger: str = "manual", config: dict[str, Any] | None = None) -> TrainingRun:
        """Queue one training round; returns its run record."""
        run = self._runs.create(config or {}, trigger=trigger)
        self.queue.enqueue(ROUND_JOB, run.id, job_id=f"{self._keys.prefix}-{run.id}",
                           job_timeout=JOB_TIMEOUT_S, result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600)
        return run

    def pending(self) -> int:
        """Jobs waiting for a worker."""
        return self.queue.count
