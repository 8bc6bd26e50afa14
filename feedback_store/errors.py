"""Typed errors raised by feedback_store; the HTTP layer maps each to one status code.

The Redis failures callers may catch are named here too (``RedisError``, ``STORE_UNREACHABLE``),
so that no package but this one imports ``redis``.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisError", "STORE_UNREACHABLE", "STORE_FULL", "StoreFullError", "FeedbackStoreError",
           "ValidationFailed", "KeyReusedError", "NotFoundError", "ForbiddenError", "ConflictError", "RatingLockedError",
           "UnansweredError", "InvalidTransitionError", "LockHeldError"]

STORE_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
"""The Redis failures that mean the store cannot be reached right now (retry later; HTTP 503)."""


class FeedbackStoreError(Exception):
    """Base class: a request to the store was refused; the message says why."""

    http_status = 400


class StoreFullError(FeedbackStoreError):
    """Redis reached its ``maxmemory`` and refused a write (policy ``noeviction``): nothing was written."""

    http_status = 503


STORE_FULL = (RedisOutOfMemoryError, StoreFullError)
"""A write refused because Redis is full (a command's OOM, or a script's): HTTP 503, nothing half-written."""


class ValidationFailed(FeedbackStoreError):
    """A record or argument is malformed (out of range, too long, wrong type)."""

    http_status = 422


class KeyReusedError(ValidationFailed):
    """An idempotency key sent again with a different message: a key names one message only."""


class NotFoundError(FeedbackStoreError):
    """The conversation, turn, adapter, run or schedule does not exist."""

    http_status = 404


class ForbiddenError(FeedbackStoreError):
    """The caller's token does not match the conversation's."""

    http_status = 403


class ConflictError(FeedbackStoreError):
    """The record is in a state that forbids the write (for example, an ended conversation)."""

    http_status = 409


class RatingLockedError(ConflictError):
    """The rating can no longer be corrected: its correction window has passed."""


class UnansweredError(ConflictError):
    """A rating for a conversation the bot has not answered yet: there is nothing to rate."""


class InvalidTransitionError(ConflictError):
    """An adapter or run status change that the state machine does not allow."""


class LockHeldError(ConflictError):
    """Another holder owns the lock (for example, a training run is already going)."""


class AccountDisabledError(ForbiddenError):
    """The console account exists but an admin has disabled it."""


class AccountLockedError(FeedbackStoreError):
    """Too many failed sign-ins for one account: it is locked for ``retry_after_s`` seconds."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s
