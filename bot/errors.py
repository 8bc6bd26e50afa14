"""The one place where failures become HTTP answers: ``{"error": {"code", "message"}}``.

feedback_store's typed errors carry their status; request problems raise ``ApiError``;
werkzeug's HTTP errors (413 body too large, 429 rate limited, 404, 405) get the same shape, and
a model runtime failure, an unreachable Redis or a full one (``maxmemory`` reached) is a 503. So are
the serving backpressure refusals (the reply queue full, a reply past its deadline), which carry a
``Retry-After`` header, as a locked account's 429 does.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from bot.runtime.errors import GenerationError, QueueFullError, ReplyCancelledError, ReplyTimeoutError
from bot.schemas import ErrorDetail, ErrorOut
from feedback_store.errors import (
    AccountDisabledError,
    AccountLockedError,
    STORE_FULL,
    STORE_UNREACHABLE,
    ConflictError,
    FeedbackStoreError,
    ForbiddenError,
    InvalidTransitionError,
    KeyReusedError,
    LockHeldError,
    NotFoundError,
    RatingLockedError,
    UnansweredError,
    ValidationFailed,
)

log = logging.getLogger(__name__)

_STORE_CODES: dict[type[FeedbackStoreError], str] = {
    AccountDisabledError: "account_disabled",
    AccountLockedError: "account_locked",
    RatingLockedError: "rating_locked",
    UnansweredError: "not_answered",
    InvalidTransitionError: "invalid_transition",
    KeyReusedError: "idempotency_key_reused",
    LockHeldError: "lock_held",
    ConflictError: "conflict",
    NotFoundError: "not_found",
    ForbiddenError: "forbidden",
    ValidationFailed: "invalid_request",
}


class ApiError(Exception):
    """A request the API refuses, with its status, a stable code and a readable message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def describe(exc: Exception) -> tuple[int, str, str]:
    """(status, code, message) for any failure; unexpected ones become a bare 500."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, QueueFullError):
        return 503, "overloaded", f"the bot is answering as many customers as it can: {exc}"
    if isinstance(exc, ReplyTimeoutError):
        return 503, "reply_timeout", f"the reply took too long and was stopped ({exc}); please try again"
    if isinstance(exc, ReplyCancelledError):
        return 503, "reply_cancelled", f"the reply was stopped: {exc}"
    if isinstance(exc, GenerationError):
        return 503, "generation_failed", f"no reply could be generated: {exc}"
    if isinstance(exc, STORE_UNREACHABLE):
        return 503, "store_unavailable", "the feedback store cannot be reached right now; retry shortly"
    if isinstance(exc, STORE_FULL):
        return 503, "store_full", "the feedback store is full, so nothing was saved; retry later"
    if isinstance(exc, FeedbackStoreError):
        code = next((_STORE_CODES[k] for k in type(exc).__mro__ if k in _STORE_CODES), "refused")
        return exc.http_status, code, str(exc)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = re.sub(r"\W+", "_", (exc.name or "error").lower())
        message = exc.description or code
        if status == 413:
            code = "body_too_large"
            message = f"the request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
        elif status == 429:
            code = "rate_limited"
            message = f"too many requests: the limit is {exc.description}; retry later"
        return status, code, message
    return 500, "internal_error", "the server failed to answer; please try again"


def error_payload(exc: Exception) -> tuple[int, dict]:
    """The status and JSON body describing ``exc``."""
    status, code, message = describe(exc)
    return status, ErrorOut(error=ErrorDetail(code=code, message=message)).model_dump()


def _handle(exc: Exception) -> tuple[Response, int]:
    status, body = error_payload(exc)
    if status >= 500:
        log.warning("%s %s answered %d: %s: %s", request.method, request.path, status, type(exc).__name__, exc)
    response = jsonify(body)
    if isinstance(exc, HTTPException) and exc.code == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    retry_after_s = getattr(exc, "retry_after_s", None)  # a locked account, a refused or stopped reply
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response, status


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    for kind in (ApiError, FeedbackStoreError, GenerationError, HTTPException, *STORE_UNREACHABLE, *STORE_FULL):
        app.register_error_handler(kind, _handle)
