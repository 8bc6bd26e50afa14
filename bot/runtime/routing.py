"""Which adapter versions new requests of the generation worker may use, what serves the others, and
which idle versions to unload: shared by the worker thread and the adapter follower, under one lock."""

from __future__ import annotations

import threading
import time

from feedback_store.records import BASE_VERSION


class Routing:
    """The routable versions, the fallback (the active one) for the rest, and the versions retiring."""

    def __init__(self) -> None:
        self._fallback = BASE_VERSION
        self._routable: set[str] = {BASE_VERSION}
        self._retiring: dict[str, float] = {}  # version -> unload when idle this long
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def make_routable(self, version: str) -> None:
        """Let new requests use ``version`` (after it was installed and probed)."""
        with self._lock:
            self._routable.add(version)
            self._retiring.pop(version, None)

    def set_fallback(self, version: str) -> None:
        """Serve requests for versions that are not routable with ``version`` (the active one)."""
        with self._lock:
            self._fallback = version
            self._routable.add(version)
            self._retiring.pop(version, None)

    def retire(self, version: str, after_idle_s: float) -> None:
        """Unload ``version`` once nothing used it for ``after_idle_s`` (0: stop routing to it now)."""
        with self._lock:
            if version in (self._fallback, BASE_VERSION):
                return
            self._retiring[version] = after_idle_s
            if after_idle_s <= 0:
                self._routable.discard(version)

    def keep(self, version: str) -> None:
        """Stop retiring ``version`` (it is being installed again), without making it routable yet."""
        with self._lock:
            self._retiring.pop(version, None)

    def loaded_versions(self) -> list[str]:
        """Versions that requests are served with right now."""
        with self._lock:
            return sorted(self._routable)

    def fallback(self) -> str:
        with self._lock:
            return self._fallback

    def serve(self, version: str, strict: bool) -> str:
        """The version a new request for ``version`` is served with (exactly ``version`` if ``strict``)."""
        with self._lock:
            served = version if strict or version in self._routable else self._fallback
            self._last_used[served] = time.monotonic()
            return served

    def used(self, versions: set[str]) -> None:
        """Rows of ``versions`` were just decoded."""
        now = time.monotonic()
        with self._lock:
            for version in versions:
                self._last_used[version] = now

    def take_idle(self, in_use: set[str]) -> list[str]:
        """The retiring versions not in use that were idle long enough: no longer routable, to unload now."""
        now = time.monotonic()
        with self._lock:
            idle = [v for v, after in self._retiring.items()
                    if v not in in_use and now - self._last_used.get(v, 0.0) >= after]
            for version in idle:
                del self._retiring[version]
                self._routable.discard(version)
        return idle
