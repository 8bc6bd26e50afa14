"""Following the adapter registry: which versions an engine serves, and which one a new conversation gets.

It syncs at every registry announcement and again every ``resync_s`` seconds
(``bot.runtime.following``), so an announcement missed while resubscribing is caught up. A
sync loads every active or canary version not loaded yet: its files are verified (``verify_registered``:
inside the store's ``Settings.adapters_dir``, checksums against the manifest and the registry) and read
(``read_adapter``), each where the engine's loader says (``AdapterLoader.read``: the in-process worker runs
each between two decode steps), and handed to that loader while the engine keeps serving. A version
that fails verification or loading is refused with a logged reason and not tried again by this
process; what served before keeps serving. The active version, once loaded, serves requests pinned to
versions that are not; versions neither active nor canary any more are unloaded once idle (rejected
ones take no new requests at once). A new conversation gets the canary at the registry's canary
share, the active version otherwise.

The loader (``AdapterLoader``) is the engine's part: the in-process generation worker
(``bot.runtime.hotswap``) or a vLLM server (``bot.runtime.vllm_backend``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from functools import partial
from typing import Callable, Protocol, TypeVar

from bot.runtime.adapters import VerifiedAdapter, read_adapter
from bot.runtime.errors import GenerationError
from bot.runtime.following import Following
from feedback_store import FeedbackStore, NotFoundError
from feedback_store.records import BASE_VERSION
from loopdesk.adapter_format import InvalidAdapterError, verify_registered

log = logging.getLogger(__name__)
T = TypeVar("T")


class AdapterLoader(Protocol):
    """What an engine does for the follower: load and unload adapters, and say which it serves."""

    def read(self, read: Callable[[], T]) -> T:
        """Run ``read`` (verifying an adapter's files, or reading them) where it holds up serving least;
        its result.

        Raises:
            InvalidAdapterError: as ``verify_registered`` or ``read_adapter`` do; the follower refuses the
                version for good.
        """

    def load(self, adapter: VerifiedAdapter) -> None:
        """Serve ``adapter.version`` from now on.

        Raises:
            InvalidAdapterError: this engine cannot serve it; the follower refuses it for good.
            Exception: anything else passes (a server out of reach); the next sync tries again.
        """

    def set_fallback(self, version: str) -> None:
        """Serve requests pinned to versions that are not loaded with ``version`` (the active one)."""

    def unload(self, version: str, idle_s: float) -> bool:
        """Stop serving ``version`` once no request used it for ``idle_s`` seconds (0: no new requests
        from now on). True when the loader needs no further call for it; False: call again next sync."""

    def loaded_versions(self) -> list[str]:
        """The versions requests are served with now, ``base`` included."""


class AdapterFollower:
    """Keeps one engine's adapters in step with the registry and pins new conversations to a version."""

    def __init__(self, store: FeedbackStore, loader: AdapterLoader, base_model: str, idle_unload_s: float,
                 resync_s: float = 30.0):
        self.store = store
        self.loader = loader
        self.base_model = base_model
        self.idle_unload_s = idle_unload_s
        self.resync_s = resync_s
        self.refused: dict[str, str] = {}
        self._active, self._canary = BASE_VERSION, None
        self._unloading: set[str] = set()  # asked to unload, not done yet
        self._sync_lock = threading.Lock()
        self._following = Following("adapter", store.adapters.listen, self.sync, resync_s)

    def start(self) -> None:
        """Subscribe to announcements, load the current active/canary versions, then follow changes."""
        self._following.start()

    def stop(self) -> None:
        self._following.stop()

    def choose_version(self) -> str:
        """For a new conversation: the served active version, or the canary at the canary share."""
        canary = self._canary
        if canary and random.random() < self.store.adapters.canary_share():
            return canary
        return self._active

    def sync(self) -> None:
        """Load what the registry names active/canary; unload what it no longer names."""
        with self._sync_lock:
            active, canary = self.store.adapters.active(), self.store.adapters.canary()
            for version in (active, canary):
                if version and version not in self.loader.loaded_versions() and version not in self.refused:
                    self._load(version)
            loaded = set(self.loader.loaded_versions())
            chosen = active if active in loaded else self._active
            chosen_canary = canary if canary in loaded else None
            if active in loaded:
                self.loader.set_fallback(active)
            retiring = (loaded | self._unloading) - {BASE_VERSION, chosen, chosen_canary}
            self._unloading = {v for v in retiring if not self.loader.unload(v, self._idle_s(v))}
            # new conversations are pinned to the new choice only once what it replaced stopped being routed
            self._active, self._canary = chosen, chosen_canary

    def _load(self, version: str) -> None:
        started = time.perf_counter()
        try:
            record = self.store.adapters.get(version)
        except NotFoundError as exc:
            self._refuse(version, str(exc))
            return
        try:
            directory = self.loader.read(partial(verify_registered, record.path, self.store.settings.adapters_dir,
                                                 self.base_model, version=version, expected_sha256=record.sha256))
            adapter = self.loader.read(partial(read_adapter, directory, version))
        except (TimeoutError, GenerationError) as exc:  # the engine, not the files: busy, or stopping
            log.warning("adapter %s not read yet, trying again at the next sync: %s", version, exc)
            return
        except Exception as exc:  # whatever is wrong with the files, this version is not served
            self._refuse(version, str(exc) if isinstance(exc, InvalidAdapterError) else f"{version}: {exc!r}")
            return
        try:
            self.loader.load(adapter)
        except InvalidAdapterError as exc:
            self._refuse(version, str(exc))
            return
        except Exception as exc:
            log.warning("adapter %s not loaded yet, trying again at the next sync: %s", version, exc)
            return
        log.info("adapter %s loaded and verified in %.0f ms", version, 1000 * (time.perf_counter() - started))

    def _refuse(self, version: str, reason: str) -> None:
        self.refused[version] = reason
        log.error("adapter refused, still serving %s: %s", self._active, reason)

    def _idle_s(self, version: str) -> float:
        """How long a version no longer named may stay idle before it goes: a rejected one, not at all."""
        try:
            rejected = self.store.adapters.get(version).status == "rejected"
        except NotFoundError:
            rejected = True
        return 0.0 if rejected else self.idle_unload_s
