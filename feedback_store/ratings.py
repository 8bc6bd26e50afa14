"""Customer ratings (CSAT): once per conversation, by its token holder, correctable for a while."""

from __future__ import annotations

import time

import redis
from pydantic import ValidationError

from feedback_store.conversations import hash_token
from feedback_store.errors import ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Rating

_RATE = """
-- KEYS: conv, rating history, feedback seq, feedback log, queue
-- ARGV: token_hash, score, comment, now, correction window s, adapter queue prefix, conv id
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local f = redis.call('HMGET', KEYS[1], 'token_hash', 'csat', 'csat_comment', 'rated_at')
if f[1] ~= ARGV[1] then return fail('FORBIDDEN', 'wrong conversation token') end
if f[2] and f[2] ~= '' then
  if f[2] == ARGV[2] and (f[3] or '') == ARGV[3] then return 0 end
  if tonumber(ARGV[4]) - tonumber(f[4]) > tonumber(ARGV[5]) then
    return fail('LOCKED', 'the rating can no longer be changed: its ' .. ARGV[5] .. ' s correction window has passed')
  end
  redis.call('HSET', KEYS[1], 'csat', ARGV[2], 'csat_comment', ARGV[3], 'updated_at', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'csat', ARGV[2], 'csat_comment', ARGV[3], 'rated_at', ARGV[4], 'updated_at', ARGV[4])
end
redis.call('RPUSH', KEYS[2], cjson.encode({score = tonumber(ARGV[2]), comment = ARGV[3], at = tonumber(ARGV[4])}))
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[4], seq, ARGV[7])
requeue(KEYS[1], KEYS[5], ARGV[6])
return 1
"""


class Ratings:
    """CSAT writes; ``rate`` is idempotent and atomic."""

    def __init__(self, client: redis.Redis, keys: Keys, correction_window_s: int):
        self._keys = keys
        self._window = correction_window_s
        self._rate = Script(client, _RATE)

    def rate(self, conv_id: str, token: str, score: int, comment: str = "") -> bool:
        """Record or correct the conversation's rating; False when it repeats the stored one.

        Raises:
            ValidationFailed: score outside 1..5 or comment too long.
            ForbiddenError / NotFoundError: wrong token or unknown conversation.
            RatingLockedError: a different rating after the correction window.
        """
        try:
            rating = Rating(score=score, comment=comment)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(f"invalid rating {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        keys = self._keys
        changed = self._rate(
            [keys.conversation(conv_id), keys.rating_history(conv_id), keys.feedback_seq(),
             keys.feedback_log(), keys.queue()],
            [hash_token(token), rating.score, rating.comment, time.time(), self._window,
             keys.queue_by_adapter(""), conv_id],
        )
        return bool(changed)
