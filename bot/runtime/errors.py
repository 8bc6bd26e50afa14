"""Why a reply was not generated: the runtime's typed errors, which ``bot.errors`` maps to HTTP answers.

Every one is a ``GenerationError`` (503). The backpressure ones carry ``retry_after_s``, sent as the
``Retry-After`` header: the queue was full (nothing was stored), the reply missed its deadline, or the
client went away (nobody to answer; counted, not logged as a failure).
"""

from __future__ import annotations

RETRY_AFTER_S = 2  # what a refused customer is asked to wait: about one batch's reply time on the demo model


class GenerationError(RuntimeError):
    """No reply could be generated (engine stopped, or the model failed); the message says which."""

    retry_after_s: int | None = None


class QueueFullError(GenerationError):
    """As many replies wait for the generation worker as ``max_queued_replies`` allows."""

    retry_after_s = RETRY_AFTER_S


class ReplyTimeoutError(GenerationError):
    """The reply was not done within ``reply_deadline_s``; the worker dropped its row."""

    retry_after_s = RETRY_AFTER_S


class ReplyCancelledError(GenerationError):
    """The client that asked for the reply went away; the worker dropped its row."""
