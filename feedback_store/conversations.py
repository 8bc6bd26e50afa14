"""Conversations and their turns: start, append, end, read.

Every appended turn and every end is announced on the conversation's events channel (the index
of the turn, or ``status``), so a handed-off conversation's live streams see it at once.
"""

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
from feedback_store.records import AgentTurn, BotTurn, Conversation, CustomerTurn, Turn
from loopdesk.pii import mask_pii, page_url

MAX_TURNS = 200
CUSTOMER_MAY_WRITE = "open waiting_for_agent with_agent"  # a handed-off customer's messages go to the agent
BOT_MAY_WRITE = "open"

_APPEND = """
-- KEYS: conv, turns, events channel, message requests
-- ARGV: token_hash ('' = trusted caller), turn json, now, max turns, statuses that allow it (space-separated),
--       idempotency key ('' = none), sha256 of the message, seconds the key is kept, answer lease until
-- Returns {index, 1} for a turn appended now, {index, 0} for the customer turn the key already names.
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'status', 'token_hash', 'n_turns')
if ARGV[1] ~= '' and f[2] ~= ARGV[1] then return fail('FORBIDDEN', 'wrong conversation token') end
if ARGV[6] ~= '' then
  local seen = redis.call('HGET', KEYS[4], ARGV[6])
  if seen then
    local request = cjson.decode(seen)
    if request.sha ~= ARGV[7] then
      return fail('KEYREUSED', 'this Idempotency-Key was sent with another message: use a new key for a new message')
    end
    return {request.turn, 0}
  end
end
if not string.find(' ' .. ARGV[5] .. ' ', ' ' .. f[1] .. ' ', 1, true) then
  if f[1] == 'ended' then return fail('CONFLICT', 'the conversation has ended') end
  return fail('CONFLICT', 'the conversation is ' .. f[1] .. ': a person answers it, not the bot')
end
if tonumber(f[3]) >= tonumber(ARGV[4]) then
  return fail('CONFLICT', 'the conversation reached its limit of ' .. ARGV[4] .. ' turns')
end
local index = redis.call('RPUSH', KEYS[2], ARGV[2]) - 1
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'n_turns', index + 1)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], cjson.encode({sha = ARGV[7], turn = index, lease = tonumber(ARGV[9])}))
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
redis.call('PUBLISH', KEYS[3], index)
return {index, 1}
"""

_LEASE = """
-- KEYS: message requests
-- ARGV: idempotency key, now ('' = whoever holds it), lease until (0 = release)
local seen = redis.call('HGET', KEYS[1], ARGV[1])
if not seen then return fail('NOTFOUND', 'this Idempotency-Key has expired: send the message with a new key') end
local request = cjson.decode(seen)
if ARGV[2] ~= '' and request.lease > tonumber(ARGV[2]) then return 0 end
request.lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(request))
return 1
"""

_END = """
-- KEYS: conv, queue, handoff, waiting handoffs, claimed handoffs, events channel, feedback seq, feedback log
-- ARGV: token_hash ('' = trusted caller), now, adapter queue prefix, conv id
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'status', 'token_hash')
if ARGV[1] ~= '' and f[2] ~= ARGV[1] then return fail('FORBIDDEN', 'wrong conversation token') end
if f[1] == 'ended' then return 0 end
if f[1] ~= 'open' then
  redis.call('HSET', KEYS[3], 'ended_at', ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('ZREM', KEYS[5], ARGV[4])
end
if f[1] == 'with_agent' then redis.call('ZADD', KEYS[8], redis.call('INCR', KEYS[7]), ARGV[4]) end
redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_at', ARGV[2], 'updated_at', ARGV[2])
requeue(KEYS[1], KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[6], 'status')
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
    role = data.get("role")
    return BotTurn(**data) if role == "assistant" else AgentTurn(**data) if role == "agent" else CustomerTurn(**data)


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
        self._lease = Script(client, _LEASE)

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
        the conversation must not have ended and the token must be right (while it is with a person,
        the message is the agent's to answer)."""
        turn = self._customer_turn(text)
        index, _ = self._append(self._append_keys(conv_id), [hash_token(token), _turn_json(turn), turn.created_at,
                                                             MAX_TURNS, CUSTOMER_MAY_WRITE, "", "", 0, 0])
        return turn.model_copy(update={"index": int(index)})

    def append_customer_once(self, conv_id: str, token: str, text: str, key: str, keep_s: int,
                             lease_s: float) -> tuple[int, bool]:
        """Log the customer's message unless idempotency ``key`` already names it; one script checks the key,
        appends the turn and keeps the key for ``keep_s`` seconds, leased for ``lease_s`` to the caller who
        answers it. Returns (the customer turn's index, whether it was appended now). The key sent again
        with another text is a KeyReusedError."""
        turn = self._customer_turn(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        index, appended = self._append(
            self._append_keys(conv_id), [hash_token(token), _turn_json(turn), turn.created_at, MAX_TURNS,
                                         CUSTOMER_MAY_WRITE, key, digest, keep_s, turn.created_at + lease_s])
        return int(index), bool(appended)

    def lease_answer(self, conv_id: str, key: str, lease_s: float) -> bool:
        """Take the answering of ``key``'s message for ``lease_s`` seconds, unless another caller's lease runs."""
        now = time.time()
        return bool(self._lease([self._keys.message_requests(conv_id)], [key, now, now + lease_s]))

    def release_answer(self, conv_id: str, key: str) -> None:
        """Give up answering ``key``'s message (the answer failed), so a retry may answer it at once."""
        self._lease([self._keys.message_requests(conv_id)], [key, "", 0])

    def answer_to(self, conv_id: str, index: int) -> BotTurn | None:
        """The bot turn logged as the answer to customer turn ``index``, if there is one."""
        later = self._r.lrange(self._keys.turns(conv_id), index + 1, -1)
        turns = (parse_turn(index + 1 + i, raw) for i, raw in enumerate(later))
        return next((t for t in turns if isinstance(t, BotTurn) and t.reply_to == index), None)

    @staticmethod
    def _customer_turn(text: str) -> CustomerTurn:
        try:
            return CustomerTurn(index=0, text=mask_pii(text), created_at=time.time())
        except ValidationError as exc:
            raise ValidationFailed(f"invalid message: {exc.errors()[0]['msg']}") from None

    def append_bot(self, conv_id: str, turn: BotTurn) -> BotTurn:
        """Log a bot reply with its context, token ids and log-probs (trusted caller: the bot); the
        conversation must be open (not ended, nor with a person)."""
        index, _ = self._append(self._append_keys(conv_id), ["", _turn_json(turn), turn.created_at, MAX_TURNS,
                                                             BOT_MAY_WRITE, "", "", 0, 0])
        return turn.model_copy(update={"index": int(index)})

    def _append_keys(self, conv_id: str) -> list[str]:
        return [self._keys.conversation(conv_id), self._keys.turns(conv_id), self._keys.conversation_events(conv_id),
                self._keys.message_requests(conv_id)]

    def end(self, conv_id: str, token: str | None) -> Conversation:
        """End the conversation (idempotent); ``token=None`` for trusted callers (idle timeout). A handoff
        still waiting or with an agent ends with it (``Handoff.ended_at``); one with an agent puts the
        conversation in the feedback log, so the trainer's export sees the agent's replies."""
        keys = self._keys
        self._end(
            [keys.conversation(conv_id), keys.queue(), keys.handoff(conv_id), keys.handoffs_waiting(),
             keys.handoffs_with_agents(), keys.conversation_events(conv_id), keys.feedback_seq(),
             keys.feedback_log()],
            [hash_token(token) if token is not None else "", time.time(), keys.queue_by_adapter_prefix(), conv_id],
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
