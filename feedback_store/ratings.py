"""Customer ratings (CSAT): once per conversation the bot answered, by its token holder, correctable for a while.

Each rating carries its provenance (``RatingSource``: keyed hashes of the client's address and user
agent, and the rater key the cap groups by), on the conversation and in its rating history. A
rater's first ``client_cap`` ratings within ``client_window_s`` count; a later one is stored all
the same (the customer sees it accepted) with ``csat_weight`` 0 and the reason, and neither the
canary decision nor training counts it. A correction keeps the weight its conversation's first
rating got. The checks and the writes are one Lua script: atomic.
"""

from __future__ import annotations

import time

import redis
from pydantic import ValidationError

from feedback_store.conversations import hash_token
from feedback_store.errors import ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Rating, RatingSource
from loopdesk.pii import mask_pii

_RATE = """
-- KEYS: conv, turns, rating history, feedback seq, feedback log, queue, the rater's counted ratings
-- ARGV: token_hash, score, comment, now, correction window s, adapter queue prefix, conv id,
--       client hash, agent hash, rater ('' = none), client cap (0 = none), client window s
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'token_hash', 'csat', 'csat_comment', 'rated_at', 'n_turns', 'csat_weight')
if f[1] ~= ARGV[1] then return fail('FORBIDDEN', 'wrong conversation token') end
local answered = false
for i = 0, (tonumber(f[5]) or 0) - 1 do
  local turn = redis.call('LINDEX', KEYS[2], i)
  if turn and cjson.decode(turn)['role'] == 'assistant' then answered = true break end
end
if not answered then
  return fail('UNANSWERED', 'the bot has not answered in this conversation yet: a rating needs at least one bot reply')
end
local now, weight = tonumber(ARGV[4]), f[6]
if f[2] and f[2] ~= '' then
  if f[2] == ARGV[2] and (f[3] or '') == ARGV[3] then return 0 end
  if now - tonumber(f[4]) > tonumber(ARGV[5]) then
    return fail('LOCKED', 'the rating can no longer be changed: its ' .. ARGV[5] .. ' s correction window has passed')
  end
  redis.call('HSET', KEYS[1], 'csat', ARGV[2], 'csat_comment', ARGV[3], 'updated_at', ARGV[4])
else
  weight = '1'
  local reason = ''
  local cap, window = tonumber(ARGV[11]), tonumber(ARGV[12])
  if ARGV[10] ~= '' and cap > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. (now - window))
    if redis.call('ZCARD', KEYS[7]) >= cap then
      weight = '0'
      reason = 'client_cap: this client already has ' .. cap .. ' counted ratings within ' .. ARGV[12] .. ' s'
    else
      redis.call('ZADD', KEYS[7], now, ARGV[7])
      redis.call('EXPIRE', KEYS[7], math.ceil(window))
    end
  end
  redis.call('HSET', KEYS[1], 'csat', ARGV[2], 'csat_comment', ARGV[3], 'rated_at', ARGV[4], 'updated_at', ARGV[4],
             'client_hash', ARGV[8], 'agent_hash', ARGV[9], 'rater', ARGV[10], 'csat_weight', weight,
             'csat_weight_reason', reason)
end
redis.call('RPUSH', KEYS[3], cjson.encode({score = tonumber(ARGV[2]), comment = ARGV[3], at = now,
                                           client = ARGV[8], agent = ARGV[9], weight = tonumber(weight or '1')}))
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[5], seq, ARGV[7])
requeue(KEYS[1], KEYS[6], ARGV[6])
return 1
"""


class Ratings:
    """CSAT writes; ``rate`` is idempotent and atomic."""

    def __init__(self, client: redis.Redis, keys: Keys, correction_window_s: int, client_cap: int,
                 client_window_s: int):
        self._keys = keys
        self._window = correction_window_s
        self._cap = client_cap
        self._cap_window = client_window_s
        self._rate = Script(client, _RATE)

    def rate(self, conv_id: str, token: str, score: int, comment: str = "",
             source: RatingSource | None = None) -> bool:
        """Record or correct the conversation's rating (its comment PII masked); False when it repeats the stored one.

        ``source`` is where the rating came from (the chat API always says); None: unknown, and the
        conversation counts as its own client.

        Raises:
            ValidationFailed: score outside 1..5 or comment too long.
            ForbiddenError / NotFoundError: wrong token or unknown conversation.
            UnansweredError: the bot has not answered in the conversation yet.
            RatingLockedError: a different rating after the correction window.
        """
        try:
            rating = Rating(score=score, comment=mask_pii(comment))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(f"invalid rating {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        source = source or RatingSource()
        keys = self._keys
        changed = self._rate(
            [keys.conversation(conv_id), keys.turns(conv_id), keys.rating_history(conv_id), keys.feedback_seq(),
             keys.feedback_log(), keys.queue(), keys.rater_ratings(source.rater)],
            [hash_token(token), rating.score, rating.comment, time.time(), self._window,
             keys.queue_by_adapter_prefix(), conv_id, source.client_hash, source.agent_hash, source.rater,
             self._cap, self._cap_window],
        )
        return bool(changed)
