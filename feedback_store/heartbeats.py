"""Liveness of the training workers and schedulers: each process writes a heartbeat to Redis every
``heartbeat_interval_s`` (role, id, pid, host, when it started, when it last beat, what it is doing and
the run it works on); one whose last beat is older than ``heartbeat_stale_s`` counts as not alive.

A heartbeat says the process is up (a daemon thread writes it, so a long training step does not silence
it); the run's progress stream says whether the round moves. A process that stops cleanly removes its
heartbeat; one that is killed leaves it to go stale, listed for ``FORGET_AFTER_S`` more, then expired.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from feedback_store.keys import PROCESS_ROLES, Keys
from feedback_store.records import ID_PATTERN, Heartbeat, ProcessRole

log = logging.getLogger(__name__)

FORGET_AFTER_S = 3600.0
MAX_LISTED = 100
PROCESS_MEMBER = re.compile(rf"(?:{'|'.join(PROCESS_ROLES)}):{ID_PATTERN.strip('^$')}")


@dataclass(frozen=True)
class Liveness:
    """A heartbeat as read at one moment: how old it is and whether that is recent enough to be alive."""

    heartbeat: Heartbeat
    age_s: float
    alive: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.heartbeat.model_dump(), "age_s": round(self.age_s, 1), "alive": self.alive}


def _dump(heartbeat: Heartbeat) -> dict[str, Any]:
    return {k: ("" if v is None else v) for k, v in heartbeat.model_dump().items()}


def _parse(fields: dict[str, str]) -> Heartbeat:
    return Heartbeat(**{k: v for k, v in fields.items() if v != ""})


class Heartbeats:
    """The heartbeats under one key prefix: written by the processes (``start``), read by the console."""

    def __init__(self, client: redis.Redis, keys: Keys, interval_s: float, stale_s: float):
        self._r = client
        self._keys = keys
        self.interval_s = interval_s
        self.stale_s = stale_s

    def beat(self, heartbeat: Heartbeat) -> None:
        """Store ``heartbeat``: its hash expires ``stale_s + FORGET_AFTER_S`` after this beat."""
        key = self._keys.heartbeat(heartbeat.role, heartbeat.id)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=_dump(heartbeat))
        pipe.expire(key, int(self.stale_s + FORGET_AFTER_S))
        pipe.zadd(self._keys.heartbeats(), {f"{heartbeat.role}:{heartbeat.id}": heartbeat.last_beat})
        pipe.execute()

    def remove(self, role: ProcessRole, process_id: str) -> None:
        """Forget a process's heartbeat (it stopped cleanly)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._keys.heartbeat(role, process_id))
        pipe.zrem(self._keys.heartbeats(), f"{role}:{process_id}")
        pipe.execute()

    def list(self, role: ProcessRole | None = None, now: float | None = None) -> list[Liveness]:
        """The processes (of ``role``, or all) heard from within the last ``stale_s + FORGET_AFTER_S``
        seconds, the most recent beat first; the index entries of expired ones are dropped."""
        now = time.time() if now is None else now
        index = self._keys.heartbeats()
        self._r.zremrangebyscore(index, "-inf", f"({now - self.stale_s - FORGET_AFTER_S}")
        members = [m for m in self._r.zrevrange(index, 0, MAX_LISTED - 1) if PROCESS_MEMBER.fullmatch(m)]
        pipe = self._r.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self._keys.heartbeat(*member.split(":")))
        out, gone = [], []
        for member, fields in zip(members, pipe.execute()):
            try:
                heartbeat = _parse(fields) if fields else None
            except ValidationError as exc:
                log.warning("heartbeat %s is unreadable, left out: %s", member, exc)
                continue
            if heartbeat is None:
                gone.append(member)
            elif role is None or heartbeat.role == role:
                age = max(0.0, now - heartbeat.last_beat)
                out.append(Liveness(heartbeat, age, age <= self.stale_s))
        if gone:
            self._r.zrem(index, *gone)
        return out

    def start(self, role: ProcessRole, doing: str = "") -> "ProcessHeartbeat":
        """This process's heartbeat, written now and then every ``interval_s`` until stopped."""
        return ProcessHeartbeat(self, role, doing).start()


class ProcessHeartbeat:
    """One process's own heartbeat: a daemon thread writes it every interval; ``set`` changes what it says
    (and writes it at once); ``stop`` (or leaving the ``with`` block) removes it. A beat that cannot be
    written (Redis away) is logged and tried again at the next interval: readers see the process go stale."""

    def __init__(self, heartbeats: Heartbeats, role: ProcessRole, doing: str = ""):
        now = time.time()
        self.id = secrets.token_hex(6)
        self._heartbeats = heartbeats
        self._record = Heartbeat(role=role, id=self.id, pid=os.getpid(), host=socket.gethostname()[:255],
                                 started_at=now, last_beat=now, doing=doing)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{role}-heartbeat", daemon=True)

    @property
    def record(self) -> Heartbeat:
        """What the last beat said."""
        return self._record

    def start(self) -> "ProcessHeartbeat":
        self.beat()
        self._thread.start()
        return self

    def set(self, doing: str, run_id: str | None = None) -> None:
        """Say what the process does now (and the run it works on, if any)."""
        with self._lock:
            self._record = self._record.model_copy(update={"doing": doing[:500], "run_id": run_id})
        self.beat()

    def beat(self) -> None:
        with self._lock:
            self._record = self._record.model_copy(update={"last_beat": time.time()})
            record = self._record
        try:
            self._heartbeats.beat(record)
        except redis.RedisError as exc:
            log.warning("%s heartbeat %s not written (tried again in %g s): %s", record.role, record.id,
                        self._heartbeats.interval_s, exc)

    def _run(self) -> None:
        while not self._stopped.wait(self._heartbeats.interval_s):
            self.beat()

    def stop(self) -> None:
        """Stop beating and remove the heartbeat."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self._heartbeats.remove(self._record.role, self.id)
        except redis.RedisError as exc:
            log.warning("%s heartbeat %s not removed (it goes stale): %s", self._record.role, self.id, exc)

    def __enter__(self) -> "ProcessHeartbeat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
