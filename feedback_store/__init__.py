"""feedback_store: every Redis key loopdesk uses, its typed records and the operations on them.

Nothing outside this package names a Redis key. The package imports neither torch, flask nor
the trainer, so every process (bot, trainer, simulator, CLI) can use it cheaply.
"""

from feedback_store.connection import connect
from feedback_store.errors import (
    ConflictError,
    FeedbackStoreError,
    ForbiddenError,
    InvalidTransitionError,
    NotFoundError,
    RatingLockedError,
    UnansweredError,
    ValidationFailed,
)
from feedback_store.store import FeedbackStore

__all__ = [
    "FeedbackStore",
    "connect",
    "FeedbackStoreError",
    "ValidationFailed",
    "NotFoundError",
    "ForbiddenError",
    "ConflictError",
    "RatingLockedError",
    "UnansweredError",
    "InvalidTransitionError",
]
