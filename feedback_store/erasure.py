"""Everything stored about one conversation: reading it all (``export``), and removing it all at
once, by erasure (``erase``) or when its retention period is over (``feedback_store.retention``).

A conversation's data is its hash, turns (the agents' replies among them), rating history,
annotated-turn set, one annotation hash per annotated turn, its latest handoff to a person (with the
email address a customer left for a reply) and its earlier ones, and its entries in every index: by
time, by adapter version, the expert queue and its per-version twin, the tag sets, the feedback log
(what the trainer exports), its rater's counted-ratings set, and the inbox's waiting, claimed and
email-request sets. ``remove`` deletes all of it, and writes what replaces it, in one Lua script
(atomic: a crash leaves the conversation whole or gone), then announces it on the conversation's
events channel so that live streams of it end. The script first checks that the conversation is as
it was read: every write to one changes its turn count, status, update time or feedback sequence
number, or its handoff's resolution (an answered email request changes nothing else); if one landed
meanwhile, it is read again. The script deletes before it writes, so a full Redis (``maxmemory``,
``noeviction``) still lets erasure and pruning through.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from feedback_store.conversations import hash_token, parse_conversation, parse_turn
from feedback_store.errors import ConflictError, ForbiddenError, NotFoundError
from feedback_store.handoffs import parse_handoff
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Annotation, Conversation, Handoff, Turn
from feedback_store.remains import ErasedConversation, PrunedConversation
from feedback_store.runs import Runs

RUNS_SCANNED = 1000  # the newest runs looked at for "may have used it"
USED_BY = ("running", "succeeded", "rejected")  # a failed run released nothing
REMOVE_TRIES = 20

_REMOVE = """
-- KEYS: conv, feedback log, handoff, events channel, the conversation's other data keys, the sorted sets
--       and the sets that index it, the pruned hash, and the replacement record's hash when ARGV[9] ~= ''
-- ARGV: conv id, n_turns, updated_at and status as read, feedback seq as read ('' = none),
--       n data keys, n sorted sets, n sets, replacement record json, the handoff's resolved_at as read
local f = redis.call('HMGET', KEYS[1], 'n_turns', 'updated_at', 'status')
local seq = redis.call('ZSCORE', KEYS[2], ARGV[1])
local read_seq = ARGV[5] ~= '' and tonumber(ARGV[5]) or false
if (f[1] or '') ~= ARGV[2] or (f[2] or '') ~= ARGV[3] or (f[3] or '') ~= ARGV[4]
   or (seq and tonumber(seq) or false) ~= read_seq
   or (redis.call('HGET', KEYS[3], 'resolved_at') or '') ~= ARGV[10] then
  return 0
end
local n_data, n_zsets, n_sets = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
-- a deletion first: once a script has written, a full Redis (noeviction) lets its later writes through
redis.call('DEL', KEYS[1], KEYS[3], unpack(KEYS, 5, 4 + n_data))
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 5 + n_data, 4 + n_data + n_zsets do redis.call('ZREM', KEYS[i], ARGV[1]) end
for i = 5 + n_data + n_zsets, 4 + n_data + n_zsets + n_sets do redis.call('SREM', KEYS[i], ARGV[1]) end
local pruned = 5 + n_data + n_zsets + n_sets
redis.call('HDEL', KEYS[pruned], ARGV[1])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[pruned + 1], ARGV[1], ARGV[9]) end
redis.call('PUBLISH', KEYS[4], 'status')
return 1
"""


@dataclass
class Stored:
    """A conversation's data as read (the raw hash, turns and rating history, annotations by turn, the latest
    handoff's hash and the earlier handoffs) and the feedback-log sequence number and tag sets that refer to it."""

    id: str
    fields: dict[str, str]
    turns: list[str]
    ratings: list[str]
    annotations: dict[int, list[str]]
    feedback_seq: int | None
    handoff: dict[str, str] = field(default_factory=dict)
    earlier_handoffs: list[str] = field(default_factory=list)
    tag_keys: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return bool(self.fields)

    def conversation(self) -> Conversation:
        return parse_conversation(self.fields)

    def parsed_turns(self) -> list[Turn]:
        return [parse_turn(i, raw) for i, raw in enumerate(self.turns)]

    def parsed_handoffs(self) -> list[Handoff]:
        """Every handoff of the conversation, oldest first."""
        earlier = [parse_handoff(json.loads(raw)) for raw in self.earlier_handoffs]
        return earlier + ([parse_handoff(self.handoff)] if self.handoff else [])

    def parsed_annotations(self) -> dict[int, list[Annotation]]:
        return {i: sorted((Annotation(**json.loads(v)) for v in values), key=lambda a: a.created_at)
                for i, values in self.annotations.items()}

    @property
    def has_feedback(self) -> bool:
        """Rated or annotated: what the trainer learns from."""
        return self.fields.get("csat", "") != "" or any(self.annotations.values())

    def first_feedback_at(self) -> float | None:
        """When its first rating or annotation arrived."""
        times = [json.loads(r)["at"] for r in self.ratings]
        times += [a.created_at for anns in self.parsed_annotations().values() for a in anns]
        return min(times) if times else None

    def data_keys(self, keys: Keys) -> list[str]:
        """The keys that hold only this conversation's data."""
        return [keys.conversation(self.id), keys.handoff(self.id), keys.turns(self.id), keys.rating_history(self.id),
                keys.annotated_turns(self.id), keys.earlier_handoffs(self.id), keys.message_requests(self.id),
                *(keys.annotations(self.id, i) for i in self.annotations)]


@dataclass(frozen=True)
class Replacement:
    """What ``remove`` writes where the conversation was: ``record`` under ``key`` in a hash, or nothing."""

    key: str | None = None
    record: str = ""


Decision = Callable[[Stored], Replacement | None]  # None: leave the conversation as it is


class Erasure:
    """Read, export and remove one conversation's data."""

    def __init__(self, client: redis.Redis, keys: Keys, runs: Runs):
        self._r = client
        self._keys = keys
        self._runs = runs
        self._remove = Script(client, _REMOVE)

    def tag_keys(self) -> list[str]:
        """Every tag set (a replaced annotation's old tags stay in theirs, so the current ones do not say all)."""
        return sorted(self._r.scan_iter(match=self._keys.tagged_pattern(), count=1000))

    def read(self, conv_id: str, tag_keys: list[str]) -> Stored:
        """The conversation's data (empty where there is none), and which of ``tag_keys`` hold it."""
        k = self._keys
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(k.conversation(conv_id))
        pipe.lrange(k.turns(conv_id), 0, -1)
        pipe.lrange(k.rating_history(conv_id), 0, -1)
        pipe.smembers(k.annotated_turns(conv_id))
        pipe.zscore(k.feedback_log(), conv_id)
        pipe.hgetall(k.handoff(conv_id))
        pipe.lrange(k.earlier_handoffs(conv_id), 0, -1)
        for tag_key in tag_keys:
            pipe.sismember(tag_key, conv_id)
        fields, turns, ratings, indices, seq, handoff, earlier, *members = pipe.execute()
        indices = sorted(int(i) for i in indices)
        for index in indices:
            pipe.hvals(k.annotations(conv_id, index))
        annotations = dict(zip(indices, pipe.execute()))
        stored = Stored(conv_id, fields, turns, ratings, annotations, None if seq is None else int(seq), handoff,
                        earlier)
        tags = {tag for anns in stored.parsed_annotations().values() for a in anns for tag in a.tags}
        stored.tag_keys = sorted({t for t, m in zip(tag_keys, members) if m} | {k.tagged(t) for t in tags})
        return stored

    def remove(self, conv_id: str, decide: Decision, tag_keys: list[str] | None = None) -> Replacement | None:
        """Delete the conversation's data and index entries and write ``decide``'s replacement, atomically;
        ``decide`` sees the data as it stands and may keep it (None) or raise.

        Raises:
            ConflictError: the conversation changed under every one of ``REMOVE_TRIES`` attempts.
            StoreFullError: never for the removal itself (it deletes before it writes).
        """
        k = self._keys
        tag_keys = self.tag_keys() if tag_keys is None else tag_keys
        for _ in range(REMOVE_TRIES):
            stored = self.read(conv_id, tag_keys)
            replacement = decide(stored)
            if replacement is None:
                return None
            version, rater = stored.fields.get("adapter_version"), stored.fields.get("rater")
            data = stored.data_keys(k)[2:]
            zsets = [k.conversations_by_time(), k.queue(), k.handoffs_waiting(), k.handoffs_with_agents(),
                     k.contact_requests()]
            zsets += [k.conversations_by_adapter(version), k.queue_by_adapter(version)] if version else []
            zsets += [k.rater_ratings(rater)] if rater else []
            record_key = [replacement.key] if replacement.key else []
            f = stored.fields
            done = self._remove(
                [k.conversation(conv_id), k.feedback_log(), k.handoff(conv_id), k.conversation_events(conv_id), *data,
                 *zsets, *stored.tag_keys, k.pruned(), *record_key],
                [conv_id, f.get("n_turns", ""), f.get("updated_at", ""), f.get("status", ""),
                 "" if stored.feedback_seq is None else stored.feedback_seq, len(data), len(zsets),
                 len(stored.tag_keys), replacement.record if replacement.key else "",
                 stored.handoff.get("resolved_at", "")])
            if done:
                return replacement
        raise ConflictError(f"conversation {conv_id} kept changing while it was being removed; try again")

    def pruned(self, conv_id: str) -> PrunedConversation | None:
        raw = self._r.hget(self._keys.pruned(), conv_id)
        return PrunedConversation.model_validate_json(raw) if raw else None

    def erased(self, conv_id: str) -> ErasedConversation | None:
        raw = self._r.hget(self._keys.erased(), conv_id)
        return ErasedConversation.model_validate_json(raw) if raw else None

    def erase(self, conv_id: str, token: str | None = None) -> ErasedConversation:
        """Erase the conversation, or what its pruning kept; idempotent. ``token``: the customer's (checked);
        None: an operator's request.

        Raises:
            NotFoundError: nothing is stored, or was ever erased, under ``conv_id``.
            ForbiddenError: ``token`` is not the conversation's.
        """
        offered = hash_token(token) if token is not None else None

        def check(token_hash: str) -> None:
            if offered is not None and not hmac.compare_digest(token_hash, offered):
                raise ForbiddenError("wrong conversation token")

        done = self.erased(conv_id)
        if done is not None:
            check(done.token_hash)
            return done
        runs = [r for r in self._runs.list(limit=RUNS_SCANNED) if r.status in USED_BY and r.started_at is not None]

        def decide(stored: Stored) -> Replacement:
            pruned = None if stored.exists else self.pruned(conv_id)
            if not stored.exists and pruned is None:
                raise NotFoundError(f"no conversation {conv_id!r}")
            token_hash = stored.fields["token_hash"] if stored.exists else pruned.token_hash
            check(token_hash)
            first = stored.first_feedback_at() if stored.exists else pruned.feedback_at
            used = [r for r in runs if first is not None and r.started_at >= first]
            record = ErasedConversation(
                id=conv_id, token_hash=token_hash, erased_at=time.time(),
                by="customer" if offered is not None else "operator", was="stored" if stored.exists else "pruned",
                used_by_runs=sorted(r.id for r in used), adapters=sorted({r.adapter_version for r in used
                                                                         if r.adapter_version}))
            return Replacement(self._keys.erased(), record.model_dump_json())

        try:
            replacement = self.remove(conv_id, decide)
        except NotFoundError:
            done = self.erased(conv_id)  # erased meanwhile by another request
            if done is None:
                raise
            check(done.token_hash)
            return done
        return ErasedConversation.model_validate_json(replacement.record)

    def export(self, conv_id: str) -> dict[str, Any]:
        """Everything stored about the conversation, as JSON-ready data: its record, turns (with the
        prompts, token ids and log-probs, and the agents' replies), rating history, annotations, its
        handoffs to a person (with the email address left for a reply), its place in every index, and
        what pruning or erasure left.

        Raises:
            NotFoundError: nothing is stored about ``conv_id``.
        """
        k = self._keys
        stored = self.read(conv_id, self.tag_keys())
        pruned, erased = self.pruned(conv_id), self.erased(conv_id)
        if not stored.exists and pruned is None and erased is None:
            raise NotFoundError(f"nothing is stored about conversation {conv_id!r}")
        conv = stored.conversation() if stored.exists else None
        indexes: dict[str, Any] = {"feedback_log": stored.feedback_seq,
                                   "tags": [t.rsplit(":", 1)[1] for t in stored.tag_keys]}
        if conv is not None:
            pipe = self._r.pipeline(transaction=False)
            version = conv.adapter_version
            named = {"by_time": k.conversations_by_time(), "by_adapter": k.conversations_by_adapter(version),
                     "expert_queue": k.queue(), "expert_queue_by_adapter": k.queue_by_adapter(version),
                     "handoffs_waiting": k.handoffs_waiting(), "handoffs_with_agent": k.handoffs_with_agents(),
                     "contact_requests": k.contact_requests()}
            if conv.rater:
                named["rater_counted_ratings"] = k.rater_ratings(conv.rater)
            for key in named.values():
                pipe.zscore(key, conv_id)
            indexes |= dict(zip(named, pipe.execute()))
        return {
            "conversation_id": conv_id,
            "conversation": conv.model_dump(mode="json") if conv else None,
            "turns": [t.model_dump(mode="json") for t in stored.parsed_turns()],
            "rating_history": [json.loads(r) for r in stored.ratings],
            "annotations": {str(i): [a.model_dump(mode="json") for a in anns]
                            for i, anns in stored.parsed_annotations().items()},
            "handoffs": [h.model_dump(mode="json") for h in stored.parsed_handoffs()],
            "indexes": indexes,
            "pruned": pruned.model_dump(mode="json") if pruned else None,
            "erased": erased.model_dump(mode="json") if erased else None,
        }
