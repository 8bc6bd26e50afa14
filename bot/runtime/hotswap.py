"""Adapter hot-swap in the in-process generation worker: the follower's loader for ``Engine``.

A new adapter is loaded beside the ones serving: its files are verified, then read, then its weights
matched to the model's layers (``lora.prepare``) and added, each on the worker's thread between two
batch steps (each under a millisecond of Python on the default model; the same work on the follower's
thread slowed the decode steps it overlapped by several, as each step gives the interpreter's lock up
and waits to get it back), and probed with a short generation before any request may use it: a row
that joins the running batch and reads the probe prompt through its decode steps (no prefill pass to
hold up the replies in flight), which also leaves the prompt's keys and values for the version's
first requests to start from. An adapter that fails is deleted again and refused. Unloading stops
routing to a version (at once for a rejected one); the worker deletes it once no request has used it
for the idle time.
"""

from __future__ import annotations

import queue
import time
from typing import Callable, TypeVar

from bot.runtime.adapters import VerifiedAdapter
from bot.runtime.batching import Row
from bot.runtime.errors import GenerationError
from bot.runtime.worker import GenerationWorker, Request
from loopdesk.adapter_format import InvalidAdapterError

PROBE_TOKENS = 4
PROBE_TIMEOUT_S = 60.0
T = TypeVar("T")


class WorkerLoader:
    """Loads, probes and retires adapters of one generation worker (``follower.AdapterLoader``)."""

    def __init__(self, worker: GenerationWorker, probe_prompt_ids: list[int]):
        self.worker = worker
        self.probe_prompt_ids = probe_prompt_ids

    def read(self, read: Callable[[], T]) -> T:
        """``read`` on the worker's thread, between two batch steps (a part of loading an adapter, of a
        millisecond or less on the default model)."""
        return self.worker.between_steps(read).result(timeout=PROBE_TIMEOUT_S)

    def load(self, adapter: VerifiedAdapter) -> None:
        """Install ``adapter`` between two batch steps, probe it, then let requests use it.

        Raises:
            InvalidAdapterError: it does not fit the model, or the probe generation failed.
        """
        version = adapter.version
        try:
            self.worker.install(adapter).result(timeout=PROBE_TIMEOUT_S)
        except (InvalidAdapterError, TimeoutError, GenerationError):
            raise  # a worker that is busy for a minute or stopped: the follower tries again at its next sync
        except Exception as exc:  # whatever else went wrong adding it, this version is not served
            raise InvalidAdapterError(f"{version}: {exc!r}") from exc
        problem = self._probe(version)
        if problem:
            self.worker.uninstall(version).result()
            raise InvalidAdapterError(f"{version}: probe generation failed: {problem}")
        self.worker.routing.make_routable(version)

    def set_fallback(self, version: str) -> None:
        self.worker.routing.set_fallback(version)

    def unload(self, version: str, idle_s: float) -> bool:
        """Retire ``version``; the worker deletes it once idle, so no further call is needed."""
        self.worker.routing.retire(version, idle_s)
        return True

    def loaded_versions(self) -> list[str]:
        return self.worker.routing.loaded_versions()

    def _probe(self, version: str) -> str:
        """Generate a few tokens with ``version``; return what went wrong, or ``""``."""
        request = Request(version, Row(self.probe_prompt_ids, PROBE_TOKENS), strict=True, feed=True)
        request.row.owner = request
        self.worker.submit(request)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        try:
            while request.events.get(timeout=max(0.0, deadline - time.monotonic())) != "done":
                pass
        except queue.Empty:
            return f"no reply within {PROBE_TIMEOUT_S:.0f} s"
        return request.row.error
