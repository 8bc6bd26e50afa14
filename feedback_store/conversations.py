"""Conversations and their turns: start, append, end, read."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

import redis
from pydantic import ValidationError

from feedback_store.errors import ForbiddenError, NotFoundError, ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import BotTurn, Conversation, CustomerTurn, Turn
from loopdesk.pii import mask_pii, page_url

MAX_TURNS = 200

_APPEND = """
-- KEYS: conv, turns   ARGV: token_hash ('' = trusted caller), turn json, now, max turns
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'status', 'token_hash', 'n_turns')
if ARGV[1] ~= '' and f[2] ~= ARGV[1] then return fail('FORBIDDEN', 'wrong conversation token') end
if f[1] ~= 'open' then return fail('CONFLICT', 'the conversation has ended') end
if tonumber(f[3]) >= tonumber(ARGV[4]) then
  return fail('CONFLICT', 'the conversation reached its limit of ' .. ARGV[4] .. ' turns')
end
local index = redis.call('RPUSH', KEYS[2], ARGV[2]) - 1
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'n_turns', index + 1)
return index
"""

_END = """
-- KEYS: conv, queue   ARGV: token_hash ('' = trusted caller), now, adapter queue prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'status', 'token_hash')
if ARGV[1] ~= '' and f[2] ~= ARGV[1] then return fail('FORBIDDEN', 'wrong conversation token') end
if f[1] == 'ended' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_at', ARGV[2], 'updated_at', ARGV[2])
requeue(KEYS[1], KEYS[2], ARGV[3])
return 1
"""


def hash_token(token: str) -> str:
    """The stored form of a customer token (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _turn_json(turn: Turn) -> str:
    return turn.model_dump_json(exclude={"index"})


def parse_turn(index: int, raw: str) -> Turn:
    """A stored turn back as its record; its list position is its index."""
    data = json.loads(raw)
    data["index"] = index
    return BotTurn(**data) if data.get("role") == "assistant" else CustomerTurn(**data)


def stored_meta(meta: dict[str, str]) -> dict[str, str]:
    """A conversation's labels as stored: URLs without query, fragment or credentials, PII masked."""
    return {mask_pii(k): mask_pii(page_url(v)) for k, v in meta.items()}


def parse_conversation(fields: dict[str, str]) -> Conversation:
    """A conversation hash back as its record."""
    data: dict[str, Any] = {k: v for k, v in fields.items() if k != "annotated"}
    data["meta"] = json.loads(data.get("meta", "{}"))
    for key in ("ended_at", "rated_at", "csat"):
        if data.get(key, "") == "":
            data.pop(key, None)
    return Conversation(**data)


class Conversations:
    """Operations on conversations; customer-facing writes check the conversation token."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r = client
        self._keys = keys
        self._append = Script(client, _APPEND)
        self._end = Script(client, _END)

    def start(self, adapter_version: str, meta: dict[str, str] | None = None) -> tuple[Conversation, str]:
        """Open a conversation pinned to ``adapter_version``; return it and the customer token."""
        token = secrets.token_urlsafe(24)
        now = time.time()
        try:
            conv = Conversation(
                id=uuid.uuid4().hex,
                token_hash=hash_token(token),
                adapter_version=adapter_version,
                created_at=now,
                updated_at=now,
                meta=stored_meta(meta or {}),
            )
        except ValidationError as exc:
            raise ValidationFailed(f"cannot start conversation: {exc}") from None
        if len(json.dumps(conv.meta)) > 2000:
            raise ValidationFailed("conversation metadata must be under 2000 characters")
        fields = conv.model_dump(exclude_none=True)
        fields["meta"] = json.dumps(conv.meta)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._keys.conversation(conv.id), mapping=fields)
        pipe.zadd(self._keys.conversations_by_time(), {conv.id: now})
        pipe.zadd(self._keys.conversations_by_adapter(adapter_version), {conv.id: now})
        pipe.execute()
        return conv, token

    def get(self, conv_id: str) -> Conversation:
        """The conversation, or NotFoundError."""
        fields = self._r.hgetall(self._keys.conversation(conv_id))
        if not fields:
            raise NotFoundError(f"no conversation {conv_id!r}")
        return parse_conversation(fields)

    def check_token(self, conv_id: str, token: str) -> Conversation:
        """The conversation if ``token`` is its customer token, else ForbiddenError."""
        conv = self.get(conv_id)
        if not hmac.compare_digest(conv.token_hash, hash_token(token)):
            raise ForbiddenError("wrong conversation token")
        return conv

    def append_customer(self, conv_id: str, token: str, text: str) -> CustomerTurn:
        """Log what the customer typed, PII masked (``loopdesk.pii.mask_pii``: the model sees it so too);
        the conversation must be open and the token right."""
        try:
            turn = CustomerTurn(index=0, text=mask_pii(text), created_at=time.time())
        except ValidationError as exc:
            raise ValidationFailed(f"invalid message: {exc.errors()[0]['msg']}") from None
        index = self._append(
            [self._keys.conversation(conv_id), self._keys.turns(conv_id)],
            [hash_token(token), _turn_json(turn), turn.created_at, MAX_TURNS],
        )
        return turn.model_copy(update={"index": int(index)})

    def append_bot(self, conv_id: str, turn: BotTurn) -> BotTurn:
        """Log a bot reply with its context, token ids and log-probs (trusted caller: the bot)."""
        index = self._append(
            [self._keys.conversation(conv_id), self._keys.turns(conv_id)],
            ["", _turn_json(turn), turn.created_at, MAX_TURNS],
        )
        return turn.model_copy(update={"index": int(index)})

    def end(self, conv_id: str, token: str | None) -> Conversation:
        """End the conversation (idempotent); ``token=None`` for trusted callers (idle timeout)."""
        self._end(
            [self._keys.conversation(conv_id), self._keys.queue()],
            [hash_token(token) if token is not None else "", time.time(),
             self._keys.queue_by_adapter("")],
        )
        return self.get(conv_id)

    def turns(self, conv_id: str) -> list[Turn]:
        """All turns in order."""
        return [parse_turn(i, raw) for i, raw in enumerate(self._r.lrange(self._keys.turns(conv_id), 0, -1))]

    def recent(self, limit: int = 50, since: float = 0.0, until: float | None = None) -> list[Conversation]:
        """Newest conversations first, created within ``[since, until]``."""
        ids = self._r.zrevrangebyscore(
            self._keys.conversations_by_time(), until if until is not None else "+inf", since,
            start=0, num=max(1, min(limit, 1000)),
        )
        return self.many(ids)

    def for_adapter(self, version: str, since: float = 0.0, limit: int = 5000) -> list[Conversation]:
        """Conversations pinned to adapter ``version`` created at or after ``since``, newest first."""
        ids = self._r.zrevrangebyscore(self._keys.conversations_by_adapter(version), "+inf", since,
                                       start=0, num=max(1, limit))
        return self.many(ids)

    def many(self, conv_ids: list[str]) -> list[Conversation]:
        """Several conversations in one round trip, skipping ids that no longer exist."""
        pipe = self._r.pipeline(transaction=False)
        for conv_id in conv_ids:
            pipe.hgetall(self._keys.conversation(conv_id))
        return [parse_conversation(f) for f in pipe.execute() if f]
