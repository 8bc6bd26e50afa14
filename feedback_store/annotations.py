"""Expert annotations of bot turns, and the queue experts work through."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from pydantic import ValidationError

from feedback_store.conversations import parse_conversation
from feedback_store.errors import ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Annotation, Conversation
from loopdesk.pii import mask_pii

QUEUE_SCAN_BUDGET = 5000

_ANNOTATE = """
-- KEYS: conv, turns, annotations of the turn, annotated turns, feedback seq, feedback log, queue
-- ARGV: turn index, expert id, annotation json, adapter queue prefix, conv id, tag key prefix, tags...
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no such conversation') end
local raw = redis.call('LINDEX', KEYS[2], ARGV[1])
if not raw then return fail('NOTFOUND', 'the conversation has no turn ' .. ARGV[1]) end
if cjson.decode(raw)['role'] ~= 'assistant' then
  return fail('INVALID', 'turn ' .. ARGV[1] .. ' is the customer\\'s or an agent\\'s; only bot turns are annotated')
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'annotated', '1')
for i = 7, #ARGV do redis.call('SADD', ARGV[6] .. ARGV[i], ARGV[5]) end
local seq = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[6], seq, ARGV[5])
requeue(KEYS[1], KEYS[7], ARGV[4])
return seq
"""


@dataclass(frozen=True)
class QueueFilter:
    """What the expert queue shows: CSAT range (unrated counts as no CSAT), dates, version, tag."""

    csat_min: int | None = None
    csat_max: int | None = None
    since: float | None = None
    until: float | None = None
    adapter_version: str | None = None
    tag: str | None = None
    include_annotated: bool = True


@dataclass(frozen=True)
class QueuePage:
    """One page of the queue and the counts the console shows."""

    conversations: list[Conversation]
    unannotated: int
    annotated: int
    examined: int
    counts_complete: bool = True  # False: a time or tag filter matched more than QUEUE_SCAN_BUDGET could check


class Annotations:
    """Annotation writes and reads; several experts may annotate one turn."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r = client
        self._keys = keys
        self._annotate = Script(client, _ANNOTATE)

    def annotate(self, conv_id: str, turn_index: int, expert_id: str, score: int,
                 tags: list[str] | None = None, corrected_reply: str = "", note: str = "") -> Annotation:
        """Store (or replace) this expert's annotation of a bot turn, atomically; the note is PII masked (the
        corrected reply is the bot's voice, which may name the company's own phone line or address)."""
        try:
            ann = Annotation(conversation_id=conv_id, turn_index=turn_index, expert_id=expert_id,
                             score=score, tags=tags or [], corrected_reply=corrected_reply.strip(),
                             note=mask_pii(note), created_at=time.time())
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(f"invalid annotation {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        k = self._keys
        self._annotate(
            [k.conversation(conv_id), k.turns(conv_id), k.annotations(conv_id, turn_index),
             k.annotated_turns(conv_id), k.feedback_seq(), k.feedback_log(), k.queue()],
            [turn_index, expert_id, ann.model_dump_json(), k.queue_by_adapter_prefix(), conv_id,
             k.tagged_prefix(), *ann.tags],
        )
        return ann

    def for_conversation(self, conv_id: str) -> dict[int, list[Annotation]]:
        """Annotations by bot-turn index."""
        indices = sorted(int(i) for i in self._r.smembers(self._keys.annotated_turns(conv_id)))
        pipe = self._r.pipeline(transaction=False)
        for index in indices:
            pipe.hvals(self._keys.annotations(conv_id, index))
        return {
            index: sorted((Annotation(**json.loads(v)) for v in values), key=lambda a: a.created_at)
            for index, values in zip(indices, pipe.execute())
        }

    def queue(self, flt: QueueFilter = QueueFilter(), offset: int = 0, limit: int = 25) -> QueuePage:
        """Ended conversations: unannotated first, lowest CSAT first, filtered.

        Reads the queue index (or the per-version index) in order and stops after a page is
        full or ``QUEUE_SCAN_BUDGET`` entries were examined, so a request never scans it all.
        """
        k = self._keys
        source = k.queue_by_adapter(flt.adapter_version) if flt.adapter_version else k.queue()
        rated_only = flt.csat_min is not None or flt.csat_max is not None
        lo, hi = (flt.csat_min or 1), (flt.csat_max or 5) if rated_only else 6
        top = 19 if flt.include_annotated else 9
        wanted, examined, skipped, cursor = [], 0, 0, 0
        while len(wanted) < limit and examined < QUEUE_SCAN_BUDGET:
            chunk = self._r.zrangebyscore(source, 0, top, start=cursor, num=200, withscores=True)
            if not chunk:
                break
            cursor += len(chunk)
            examined += len(chunk)
            candidates = [cid for cid, score in chunk if lo <= int(score) % 10 <= hi]
            for conv in self._matching(candidates, flt):
                if skipped < offset:
                    skipped += 1
                elif len(wanted) < limit:
                    wanted.append(conv)
        unannotated, complete = self._count(source, lo, hi, flt)
        annotated, complete_too = self._count(source, 10 + lo, 10 + hi, flt)
        return QueuePage(conversations=wanted, unannotated=unannotated, annotated=annotated, examined=examined,
                         counts_complete=complete and complete_too)

    def _count(self, source: str, lo: int, hi: int, flt: QueueFilter) -> tuple[int, bool]:
        """How many queue entries scored ``lo``..``hi`` match ``flt`` (the CSAT range is the scores'), and
        whether that is all of them: a time or tag filter reads at most ``QUEUE_SCAN_BUDGET`` entries."""
        if flt.since is None and flt.until is None and not flt.tag:
            return self._r.zcount(source, lo, hi), True
        counted, cursor = 0, 0
        while cursor < QUEUE_SCAN_BUDGET:
            chunk = self._r.zrangebyscore(source, lo, hi, start=cursor, num=500)
            if not chunk:
                return counted, True
            cursor += len(chunk)
            counted += len(self._matching(chunk, flt))
        return counted, not self._r.zrangebyscore(source, lo, hi, start=cursor, num=1)

    def _matching(self, conv_ids: list[str], flt: QueueFilter) -> list[Conversation]:
        pipe = self._r.pipeline(transaction=False)
        for conv_id in conv_ids:
            pipe.hgetall(self._keys.conversation(conv_id))
            if flt.tag:
                pipe.sismember(self._keys.tagged(flt.tag), conv_id)
        results = pipe.execute()
        step = 2 if flt.tag else 1
        out = []
        for i in range(0, len(results), step):
            fields = results[i]
            if not fields or (flt.tag and not results[i + 1]):
                continue
            conv = parse_conversation(fields)
            if flt.since is not None and conv.created_at < flt.since:
                continue
            if flt.until is not None and conv.created_at > flt.until:
                continue
            out.append(conv)
        return out
