"""Running Lua scripts atomically and turning their error codes into typed errors."""

from __future__ import annotations

from typing import Any, Sequence

import redis

from feedback_store.errors import (
    ConflictError,
    FeedbackStoreError,
    ForbiddenError,
    KeyReusedError,
    NotFoundError,
    RatingLockedError,
    StoreFullError,
    UnansweredError,
    ValidationFailed,
)

_ERRORS: dict[str, type[FeedbackStoreError]] = {
    "NOTFOUND": NotFoundError,
    "FORBIDDEN": ForbiddenError,
    "CONFLICT": ConflictError,
    "LOCKED": RatingLockedError,
    "UNANSWERED": UnansweredError,
    "INVALID": ValidationFailed,
    "KEYREUSED": KeyReusedError,
}

# Shared Lua: recompute a conversation's place in the annotation queue.
# Score = 10 * annotated + (csat or 6): unannotated first, then lowest CSAT, unrated last.
REQUEUE = """
local function requeue(conv, queue, adapter_queue_prefix)
  local f = redis.call('HMGET', conv, 'status', 'csat', 'annotated', 'id', 'adapter_version')
  if f[1] ~= 'ended' then return end
  local csat = tonumber(f[2]) or 6
  local group = 0
  if f[3] == '1' then group = 1 end
  local score = group * 10 + csat
  redis.call('ZADD', queue, score, f[4])
  redis.call('ZADD', adapter_queue_prefix .. f[5], score, f[4])
end
local function fail(code, message) return redis.error_reply('LD:' .. code .. ':' .. message) end
"""


class Script:
    """A registered Lua script whose ``LD:CODE:message`` errors become typed exceptions."""

    def __init__(self, client: redis.Redis, source: str):
        self._script = client.register_script(REQUEUE + source)

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self._script(keys=list(keys), args=list(args))
        except redis.ResponseError as exc:
            text = str(exc)
            if "LD:" in text:
                _, code, message = text[text.index("LD:"):].split(":", 2)
                raise _ERRORS.get(code, FeedbackStoreError)(message) from None
            if "-OOM " in text:  # Redis 6 refused the script's first write (so it wrote nothing); 7 raises OOM itself
                raise StoreFullError("the feedback store is full (Redis reached maxmemory): nothing was written") \
                    from None
            raise
