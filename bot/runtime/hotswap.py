"""Adapter hot-swap: keep the worker's adapters in step with the registry, without pausing serving.

A listener thread follows the registry's announcements; a loader thread then syncs: every
active or canary version not yet loaded is read and verified from disk (checksum, base model,
finite weights) while the worker keeps serving, added to the model between two batch steps,
and probed with a short generation before any request may use it. A version that fails is
refused with a logged reason and the old one keeps serving. Versions that are neither active
nor canary any more are unloaded once idle (rejected ones stop taking requests at once).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time

from bot.runtime.adapters import AdapterRefused, read_verified
from bot.runtime.batching import Row
from bot.runtime.worker import GenerationWorker, Request
from feedback_store import FeedbackStore, NotFoundError

log = logging.getLogger(__name__)

PROBE_TOKENS = 4
PROBE_TIMEOUT_S = 60.0


class AdapterManager:
    """Loads, verifies, switches and unloads adapters for one generation worker."""

    def __init__(self, store: FeedbackStore, worker: GenerationWorker, base_model: str,
                 probe_prompt_ids: list[int], idle_unload_s: float, resync_s: float = 30.0):
        self.store = store
        self.worker = worker
        self.base_model = base_model
        self.probe_prompt_ids = probe_prompt_ids
        self.idle_unload_s = idle_unload_s
        self.resync_s = resync_s
        self.refused: dict[str, str] = {}
        self._canary: str | None = None
        self._sync_lock = threading.Lock()
        self._wake: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._threads = [threading.Thread(target=self._listen, name="loopdesk-adapter-listener", daemon=True),
                         threading.Thread(target=self._load_loop, name="loopdesk-adapter-loader", daemon=True)]

    def start(self) -> None:
        """Subscribe to announcements, load the current active/canary versions, then follow changes."""
        self._threads[0].start()
        if not self._subscribed.wait(timeout=10):
            log.warning("adapter announcements: no subscription yet; relying on periodic resync")
        self.sync()
        self._threads[1].start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.put("stop")
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    def choose_version(self) -> str:
        """For a new conversation: the served active version, or the canary at the configured share."""
        canary = self._canary
        if canary and random.random() < self.store.adapters.canary_share():
            return canary
        return self.worker.fallback()

    def sync(self) -> None:
        """Load what the registry says is active/canary and retire what it no longer names."""
        with self._sync_lock:
            active, canary = self.store.adapters.active(), self.store.adapters.canary()
            for version in (active, canary):
                if version and version not in self.worker.loaded_versions() and version not in self.refused:
                    self._load(version)
            loaded = set(self.worker.loaded_versions())
            if active in loaded:
                self.worker.set_fallback(active)
            self._canary = canary if canary in loaded else None
            for version in loaded - {self.worker.fallback(), self._canary}:
                self.worker.retire(version, 0.0 if self._status(version) == "rejected" else self.idle_unload_s)

    def _load(self, version: str) -> None:
        started = time.perf_counter()
        try:
            record = self.store.adapters.get(version)
        except NotFoundError as exc:
            self._refuse(version, str(exc))
            return
        try:
            adapter = read_verified(record.path, version, self.base_model, expected_sha256=record.sha256)
            self.worker.install(adapter).result()  # matched here, added between two steps
        except Exception as exc:  # whatever is wrong with the files, this version is not served
            self._refuse(version, str(exc) if isinstance(exc, AdapterRefused) else f"{version}: {exc!r}")
            return
        problem = self._probe(version)
        if problem:
            self.worker.uninstall(version).result()
            self._refuse(version, f"{version}: probe generation failed: {problem}")
            return
        self.worker.publish(version)
        log.info("adapter %s loaded and verified in %.0f ms", version, 1000 * (time.perf_counter() - started))

    def _probe(self, version: str) -> str:
        """Generate a few tokens with ``version``; return what went wrong, or ``""``."""
        request = Request(version, Row(self.probe_prompt_ids, PROBE_TOKENS), strict=True)
        request.row.owner = request
        self.worker.submit(request)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        try:
            while request.events.get(timeout=max(0.0, deadline - time.monotonic())) != "done":
                pass
        except queue.Empty:
            return f"no reply within {PROBE_TIMEOUT_S:.0f} s"
        return request.row.error

    def _refuse(self, version: str, reason: str) -> None:
        self.refused[version] = reason
        log.error("adapter refused, still serving %s: %s", self.worker.fallback(), reason)

    def _status(self, version: str) -> str:
        try:
            return self.store.adapters.get(version).status
        except NotFoundError:
            return "rejected"

    def _listen(self) -> None:
        def stop() -> bool:  # ``listen`` calls this after subscribing, before each wait
            self._subscribed.set()
            return self._stop.is_set()

        while not self._stop.is_set():
            try:
                for announcement in self.store.adapters.listen(stop):
                    log.info("adapter announcement: %s", announcement)
                    self._wake.put("announcement")
            except Exception:
                log.exception("adapter announcements interrupted; resubscribing")
                time.sleep(1.0)
                self._wake.put("resubscribed")

    def _load_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._wake.get(timeout=self.resync_s)
            except queue.Empty:
                pass
            while not self._wake.empty():
                self._wake.get_nowait()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:
                log.exception("adapter sync failed; retrying on the next announcement")
