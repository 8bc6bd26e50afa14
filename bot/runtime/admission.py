"""The bound on replies waiting for generation: a slot per accepted message, until its reply decodes.

The web layer takes a ``Slot`` before it stores anything of a message (``Admission.reserve``, which
refuses with ``QueueFullError`` when ``limit`` slots are held) and hands it to the engine with the
request; the generation worker (or the vLLM backend) releases it when the reply starts decoding,
fails or is cancelled, and the web layer releases it wherever the reply never reaches the engine (a
declined question, a store error). Releasing twice is harmless.
"""

from __future__ import annotations

import threading

from bot.runtime.errors import QueueFullError


class Admission:
    """At most ``limit`` replies accepted and not yet decoding."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    def reserve(self) -> "Slot":
        """A slot for one more waiting reply.

        Raises:
            QueueFullError: ``limit`` replies are waiting already.
        """
        with self._lock:
            if self._held >= self.limit:
                raise QueueFullError(f"{self._held} replies are waiting for the model already (the limit); "
                                     "retry shortly")
            self._held += 1
        return Slot(self)

    def waiting(self) -> int:
        """Slots held now: replies accepted and not yet decoding."""
        with self._lock:
            return self._held

    def _release(self) -> None:
        with self._lock:
            self._held -= 1


class Slot:
    """One reply's place among the waiting ones."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the place back (once; later calls do nothing)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._admission._release()
