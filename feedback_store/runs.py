"""Training runs: records, their progress stream, the training watermark, and the run lock."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import redis

from feedback_store.errors import InvalidTransitionError, LockHeldError, NotFoundError, ValidationFailed
from feedback_store.keys import Keys
from feedback_store.records import RunStatus, TrainingRun
from loopdesk.excerpts import quoted

PROGRESS_MAXLEN = 5000
_JSON_FIELDS = ("config", "metrics")
_STREAM_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_STREAM_PART_MAX = 2**64 - 1

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _stream_id(text: str) -> tuple[int, int]:
    """The (milliseconds, sequence) of a progress event id, or ValidationFailed."""
    match = _STREAM_ID.fullmatch(text) if isinstance(text, str) else None
    parts = (int(match[1]), int(match[2] or 0)) if match else None
    if parts is None or max(parts) > _STREAM_PART_MAX:
        raise ValidationFailed(f"after: {quoted(text)} is not a progress event id: send '-' for the first events, "
                               "then the 'last' id the previous answer returned (like '1717171717171-0')")
    return parts


def _parse(fields: dict[str, str]) -> TrainingRun:
    data: dict[str, Any] = {k: v for k, v in fields.items() if v != ""}
    for key in _JSON_FIELDS:
        data[key] = json.loads(data.get(key, "{}"))
    return TrainingRun(**data)


def _dump(run: TrainingRun) -> dict[str, Any]:
    fields = {k: ("" if v is None else v) for k, v in run.model_dump().items()}
    for key in _JSON_FIELDS:
        fields[key] = json.dumps(fields[key])
    return fields


class RunLock:
    """A lock with expiry, owned by whoever holds its random token."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float):
        self._r = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.token = secrets.token_hex(16)
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)

    def acquire(self) -> "RunLock":
        if not self._r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            raise LockHeldError(f"another training run holds the lock (expires in {self._r.pttl(self.key) / 1000:.0f} s)")
        return self

    def extend(self) -> bool:
        """Push the expiry out again; False if the lock was lost."""
        return bool(self._extend(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> bool:
        return bool(self._release(keys=[self.key], args=[self.token]))

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Runs:
    """Run records; status moves queued → running → succeeded | rejected | failed."""

    def __init__(self, client: redis.Redis, keys: Keys, lock_ttl_s: float):
        self._r = client
        self._keys = keys
        self._lock_ttl_s = lock_ttl_s

    def create(self, config: dict[str, Any], trigger: str = "manual") -> TrainingRun:
        run = TrainingRun(id=f"r{self._r.incr(self._keys.run_seq()):05d}", config=config,
                          trigger=trigger, created_at=time.time())
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._keys.run(run.id), mapping=_dump(run))
        pipe.zadd(self._keys.runs(), {run.id: run.created_at})
        pipe.execute()
        return run

    def get(self, run_id: str) -> TrainingRun:
        fields = self._r.hgetall(self._keys.run(run_id))
        if not fields:
            raise NotFoundError(f"no training run {run_id!r}")
        return _parse(fields)

    def list(self, limit: int = 50) -> list[TrainingRun]:
        """Newest first."""
        pipe = self._r.pipeline(transaction=False)
        for run_id in self._r.zrevrange(self._keys.runs(), 0, limit - 1):
            pipe.hgetall(self._keys.run(run_id))
        return [_parse(f) for f in pipe.execute() if f]

    def start(self, run_id: str, watermark_from: int) -> TrainingRun:
        return self._update(run_id, {"queued"}, status="running", started_at=time.time(),
                            watermark_from=watermark_from)

    def finish(self, run_id: str, status: RunStatus, metrics: dict[str, Any] | None = None,
               adapter_version: str | None = None, watermark_to: int | None = None,
               error: str = "") -> TrainingRun:
        """Close a run; a succeeded or rejected one moves the training watermark forward."""
        if status not in ("succeeded", "rejected", "failed"):
            raise InvalidTransitionError(f"a run cannot finish as {status}")
        run = self._update(run_id, {"queued", "running"}, status=status, finished_at=time.time(),
                           metrics=metrics or {}, adapter_version=adapter_version,
                           watermark_to=watermark_to, error=error[:4000])
        if status != "failed" and watermark_to is not None:
            self._r.set(self._keys.training_watermark(), watermark_to)
        return run

    def training_watermark(self) -> int:
        """Feedback sequence number up to which finished runs have consumed the data."""
        return int(self._r.get(self._keys.training_watermark()) or 0)

    def _update(self, run_id: str, allowed_from: set[str], **changes: Any) -> TrainingRun:
        key = self._keys.run(run_id)

        def apply(pipe: redis.client.Pipeline) -> TrainingRun:
            fields = pipe.hgetall(key)
            if not fields:
                raise NotFoundError(f"no training run {run_id!r}")
            run = _parse(fields)
            if run.status not in allowed_from:
                raise InvalidTransitionError(f"run {run_id} is {run.status}; cannot become {changes.get('status')}")
            updated = run.model_copy(update=changes)
            TrainingRun.model_validate(updated.model_dump())
            pipe.multi()
            pipe.hset(key, mapping=_dump(updated))
            return updated

        return self._r.transaction(apply, key, value_from_callable=True)

    # progress stream ---------------------------------------------------------------------
    def report(self, run_id: str, **fields: Any) -> str:
        """Append a progress event (stage, step, metrics…) to the run's stream."""
        entry = {k: json.dumps(v) for k, v in fields.items()}
        return self._r.xadd(self._keys.run_progress(run_id), entry, maxlen=PROGRESS_MAXLEN, approximate=True)

    def progress(self, run_id: str, after: str = "-", count: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """Progress events after the stream id ``after`` (exclusive; ``-``: from the first), oldest first.

        Raises:
            ValidationFailed: ``after`` is not ``-`` or a stream id (``<ms>`` or ``<ms>-<seq>``, 64-bit parts).
        """
        key = self._keys.run_progress(run_id)
        if after == "-":
            start = "-"
        else:
            parts = _stream_id(after)
            if parts == (_STREAM_PART_MAX, _STREAM_PART_MAX):
                return []  # nothing can come after the last possible id
            start = f"({after}"
        return [(eid, {k: json.loads(v) for k, v in data.items()})
                for eid, data in self._r.xrange(key, start, "+", count=count)]

    def lock_expires_in(self, name: str = "training") -> float | None:
        """Seconds until the lock ``name`` expires, or None when nobody holds it."""
        ttl_ms = self._r.pttl(self._keys.lock(name))
        return ttl_ms / 1000 if ttl_ms >= 0 else None

    def lock(self, name: str = "training") -> RunLock:
        """The one-run-at-a-time lock (use as a context manager; ``extend`` while working)."""
        return RunLock(self._r, self._keys.lock(name), self._lock_ttl_s)
