"""Keeping the embedded Redis up: a bot process restarts it when it died.

``supervise_embedded_redis(settings)`` starts (once per data directory and process) a thread that
checks every ``CHECK_S`` whether the server died (``server.embedded_redis_died``: nothing listens on
its port, and it was not stopped on purpose) and then starts it again with ``ensure_embedded_redis``:
the same port, data directory (its AOF replays every acknowledged write) and password, so the
clients' retries reconnect by themselves. Several processes may supervise one server: the start lock
lets one of them restart it and the others find it running. Until it answers, requests get the
store's 503.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from feedback_store.server import EmbeddedRedisError, embedded_redis_died, ensure_embedded_redis, redis_dir
from loopdesk.config import Settings, redacted_url

log = logging.getLogger(__name__)

CHECK_S = 0.2


class EmbeddedRedisSupervisor:
    """A thread that restarts one data directory's embedded Redis whenever it died."""

    def __init__(self, data_dir: Path, appendfsync: str = "always", maxmemory: str = "0", check_s: float = CHECK_S):
        self.data_dir = Path(data_dir)
        self.appendfsync, self.maxmemory = appendfsync, maxmemory
        self.check_s = check_s
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopdesk-redis-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def check(self) -> bool:
        """Restart the server if it died; whether it was restarted here."""
        if not embedded_redis_died(self.data_dir):
            return False
        url = ensure_embedded_redis(self.data_dir, self.appendfsync, self.maxmemory)
        self.restarts += 1
        log.warning("the embedded Redis in %s had died; started again at %s", redis_dir(self.data_dir),
                    redacted_url(url))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except (EmbeddedRedisError, OSError) as exc:  # tried again at the next check
                log.error("the embedded Redis in %s could not be restarted: %s", redis_dir(self.data_dir), exc)


_supervisors: dict[Path, EmbeddedRedisSupervisor] = {}
_lock = threading.Lock()


def supervise_embedded_redis(settings: Settings) -> EmbeddedRedisSupervisor:
    """The running supervisor of ``settings``' embedded Redis, started on the first call in this process."""
    directory = redis_dir(settings.data_dir)
    with _lock:
        if directory not in _supervisors:
            supervisor = EmbeddedRedisSupervisor(settings.data_dir, settings.redis_appendfsync,
                                                 settings.redis_maxmemory)
            supervisor.start()
            _supervisors[directory] = supervisor
        return _supervisors[directory]
