"""Following a part of the store that announces its changes: sync at every announcement, and
every ``resync_s`` seconds anyway.

A listener thread subscribes to the announcements and wakes a sync thread at each one; the sync
thread also wakes every ``resync_s`` seconds, so an announcement missed while resubscribing is
caught up. ``start`` subscribes, syncs once on the caller's thread (its errors reach the caller)
and then follows. The adapter follower (``bot.runtime.follower``) and the knowledge index
(``bot.runtime.knowledge``) follow the store this way.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 10.0
RESUBSCRIBE_PAUSE_S = 1.0

Listen = Callable[[Callable[[], bool]], Iterable[Any]]
"""``listen(stop)``: yields announcements until ``stop()`` (called after subscribing, before each wait)."""


class Following:
    """Runs ``sync`` after each announcement ``listen`` yields, and at least every ``resync_s`` seconds."""

    def __init__(self, what: str, listen: Listen, sync: Callable[[], None], resync_s: float):
        self.what = what
        self.resync_s = resync_s
        self._listen_for = listen
        self._sync = sync
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._threads = [threading.Thread(target=self._listen, name=f"loopdesk-{what}-listener", daemon=True),
                         threading.Thread(target=self._follow, name=f"loopdesk-{what}-sync", daemon=True)]

    def start(self) -> None:
        """Subscribe, sync once (errors propagate), then sync on announcements and every ``resync_s``."""
        self._threads[0].start()
        if not self._subscribed.wait(timeout=SUBSCRIBE_TIMEOUT_S):
            log.warning("%s announcements: no subscription yet; relying on periodic resync", self.what)
        self._sync()
        self._threads[1].start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    def _listen(self) -> None:
        def stop() -> bool:
            self._subscribed.set()
            return self._stop.is_set()

        failures = 0
        while not self._stop.is_set():
            try:
                for announcement in self._listen_for(stop):
                    failures = 0
                    log.info("%s announcement: %s", self.what, announcement)
                    self._wake.set()
            except Exception as exc:
                failures += 1
                _log_failure(failures, f"{self.what} announcements interrupted; resubscribing", exc)
                time.sleep(RESUBSCRIBE_PAUSE_S)
                self._wake.set()

    def _follow(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.wait(timeout=self.resync_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._sync()
            except Exception as exc:
                failures += 1
                _log_failure(failures, f"{self.what} sync failed; retrying at the next announcement", exc)
            else:
                if failures:
                    log.info("%s sync works again after %d failed attempts", self.what, failures)
                failures = 0


def _log_failure(failures: int, message: str, exc: Exception) -> None:
    """The first failure in a row with its traceback, then one line at the 2nd, 4th, 8th… (Redis down for a while)."""
    if failures == 1:
        log.error(message, exc_info=exc)
    elif failures & (failures - 1) == 0:
        log.warning("%s (%d in a row): %s", message, failures, exc)
