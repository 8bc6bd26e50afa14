"""The training job queue (RQ): how the console, scheduler and CLI ask for a training round.

The job is referenced by its import path, so callers (the bot, the scheduler) never import
the trainer; only the worker process does. Jobs are JSON (``JSONSerializer``), never pickle, and the
queue and the worker both read them as ``TrainingJob``: the one thing a job in this queue can run is
``ROUND_JOB`` with one run id, so a job written into Redis by anyone else fails without running.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from feedback_store.records import TrainingRun

ROUND_JOB = "trainer.jobs.run_round"
JOB_TIMEOUT_S = 6 * 3600


class RefusedJobError(Exception):
    """A job in the training queue that is not a training round as ``TrainingQueue`` enqueues it."""


class TrainingJob(Job):
    """An RQ job that runs only ``ROUND_JOB(run_id)``, with no callbacks; anything else raises
    ``RefusedJobError`` where RQ would import and call it (the job fails, nothing runs)."""

    @property
    def func(self):
        callbacks = [self._success_callback_name, self._failure_callback_name, self._stopped_callback_name]
        args = list(self.args)
        if (self.func_name != ROUND_JOB or self.instance is not None or self.kwargs or any(callbacks)
                or len(args) != 1 or not isinstance(args[0], str)):
            raise RefusedJobError(f"job {self.id} is not a training round ({ROUND_JOB} with one run id and no "
                                  f"callbacks): {self.func_name!r} with {len(args)} arguments; refused")
        return super().func

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


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
        self.queue = Queue(keys.rq_queue_name(), connection=self.connection, job_class=TrainingJob,
                           serializer=JSONSerializer)

    def enqueue_round(self, trigger: str = "manual", config: dict[str, Any] | None = None) -> TrainingRun:
        """Queue one training round; returns its run record."""
        run = self._runs.create(config or {}, trigger=trigger)
        self.queue.enqueue(ROUND_JOB, run.id, job_id=self._job_prefix() + run.id,
                           job_timeout=JOB_TIMEOUT_S, result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600)
        return run

    def pending(self) -> int:
        """Jobs waiting for a worker."""
        return self.queue.count

    def queued_run_ids(self) -> list[str]:
        """The runs whose jobs wait in the queue, the one a worker takes next first."""
        return self._run_ids(self.queue.get_job_ids())

    def started_run_ids(self) -> list[str]:
        """The runs whose jobs a worker has taken and not yet finished (RQ's started registry)."""
        return self._run_ids(self.queue.started_job_registry.get_job_ids())

    def _job_prefix(self) -> str:
        """What a round's job id is before its run id."""
        return f"{self._keys.prefix}-"

    def _run_ids(self, job_ids: list[str]) -> list[str]:
        prefix = self._job_prefix()
        return [job_id[len(prefix):] for job_id in job_ids if job_id.startswith(prefix)]
