"""The retention period (``Settings.retention_days``): conversations that started longer ago are pruned.

Pruning a conversation removes all of it, atomically (``Erasure.remove``): the customer's messages,
the bot's replies with the prompts, token ids and log-probs, its meta, the rating's comment and
provenance hashes, the experts' annotations, and its entries in every index, the trainer's export
included. A conversation with feedback (a rating or an annotation) leaves its numbers behind as a
``PrunedConversation``: the adapter versions, times, CSAT and its weight, per bot turn the
source, length, article ids and versions, expert scores and tags, and per handoff to a person its
reason and times (the agents' replies, their names and an email address left for a reply go). Nothing
trains on them: a PPO sample needs the prompt's token ids and a reward-model pair its texts, which
are the customer's (or an agent's) words, so past its retention period a conversation is no longer
training data. The numbers stay for reporting, and so that its customer can still erase them.

A conversation whose feedback is newer than the training watermark (``Runs.training_watermark``) is
held until a round has consumed it: pruning never takes data from the round that has not run yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import redis

from feedback_store.erasure import Erasure, Replacement, Stored
from feedback_store.keys import Keys
from feedback_store.records import BotTurn
from feedback_store.remains import PrunedConversation, PrunedHandoff, PrunedTurn
from feedback_store.runs import Runs

DAY_S = 86400
BATCH = 200


@dataclass(frozen=True)
class PruneReport:
    """What one pass did (or, with ``dry_run``, would do)."""

    cutoff: float  # conversations started before it have expired
    expired: int
    pruned: int
    numbers_kept: int  # of the pruned, those with feedback, whose numbers stay
    held: int  # expired, but with feedback the next training round has not consumed yet
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would prune" if self.dry_run else "pruned"
        return (f"{self.expired} conversations started before "
                f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(self.cutoff))} UTC: {verb} {self.pruned} "
                f"({self.numbers_kept} keep their numbers); held {self.held} whose feedback the next training "
                f"round has not consumed yet")


def pruned_numbers(stored: Stored, now: float) -> PrunedConversation:
    """The numbers a pruned conversation with feedback keeps (no text, token ids, meta or hashes of the client)."""
    conv = stored.conversation()
    annotations = stored.parsed_annotations()
    turns = [PrunedTurn(index=t.index, adapter_version=t.adapter_version, created_at=t.created_at, source=t.source,
                        finished=t.finished, reply_tokens=len(t.reply_token_ids),
                        articles=[f"{a.id}@{a.version}" for a in t.articles],
                        expert_scores=[a.score for a in annotations.get(t.index, [])],
                        tags=sorted({tag for a in annotations.get(t.index, []) for tag in a.tags}))
             for t in stored.parsed_turns() if isinstance(t, BotTurn)]
    handoffs = [PrunedHandoff(reason=h.reason, requested_at=h.requested_at, available=h.available,
                              claimed_at=h.claimed_at, returned_at=h.returned_at, resolved_at=h.resolved_at,
                              ended_at=h.ended_at) for h in stored.parsed_handoffs()]
    return PrunedConversation(id=conv.id, token_hash=conv.token_hash, adapter_version=conv.adapter_version,
                              created_at=conv.created_at, ended_at=conv.ended_at, pruned_at=now,
                              n_turns=conv.n_turns, csat=conv.csat, csat_weight=conv.csat_weight,
                              rated_at=conv.rated_at, feedback_at=stored.first_feedback_at(), turns=turns,
                              handoffs=handoffs)


class Retention:
    """Prunes the conversations past ``days`` (0: keeps everything)."""

    def __init__(self, client: redis.Redis, keys: Keys, erasure: Erasure, runs: Runs, days: int):
        self._r = client
        self._keys = keys
        self._erasure = erasure
        self._runs = runs
        self.days = days

    def cutoff(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.days * DAY_S

    def expired(self, now: float | None = None) -> int:
        """How many conversations started before the cutoff (0 with retention off)."""
        if self.days <= 0:
            return 0
        return self._r.zcount(self._keys.conversations_by_time(), "-inf", f"({self.cutoff(now)}")

    def prune(self, now: float | None = None, dry_run: bool = False,
              on_progress: Callable[[], None] | None = None) -> PruneReport:
        """Prune every expired conversation (one transaction each), holding back those with unconsumed
        feedback; ``on_progress`` is called after each conversation looked at."""
        now = time.time() if now is None else now
        cutoff = self.cutoff(now)
        if self.days <= 0:
            return PruneReport(cutoff, 0, 0, 0, 0, dry_run)
        watermark = self._runs.training_watermark()  # only grows: an old value holds more, never less
        tag_keys = self._erasure.tag_keys()
        counts = {"expired": 0, "pruned": 0, "numbers_kept": 0, "held": 0}

        def decide(stored: Stored) -> Replacement | None:
            if stored.feedback_seq is not None and stored.feedback_seq > watermark:
                return None
            if not stored.exists or not stored.has_feedback:
                return Replacement()
            return Replacement(self._keys.pruned(), pruned_numbers(stored, now).model_dump_json())

        kept_in_index = 0  # held (or, in a dry run, every) conversation stays in the index: skip past them
        while True:
            ids = self._r.zrangebyscore(self._keys.conversations_by_time(), "-inf", f"({cutoff}",
                                        start=kept_in_index, num=BATCH)
            if not ids:
                break
            pipe = self._r.pipeline(transaction=False)
            for conv_id in ids:
                pipe.zscore(self._keys.feedback_log(), conv_id)
            unconsumed = {c for c, seq in zip(ids, pipe.execute()) if seq is not None and seq > watermark}
            for conv_id in ids:
                if conv_id in unconsumed:  # cheaply held here; ``decide`` checks again as it removes
                    outcome = None
                elif dry_run:
                    outcome = decide(self._erasure.read(conv_id, tag_keys))
                else:
                    outcome = self._erasure.remove(conv_id, decide, tag_keys)
                counts["expired"] += 1
                if outcome is None:
                    counts["held"] += 1
                else:
                    counts["pruned"] += 1
                    counts["numbers_kept"] += outcome.key is not None
                if outcome is None or dry_run:
                    kept_in_index += 1
                if on_progress is not None:
                    on_progress()
        return PruneReport(cutoff, dry_run=dry_run, **counts)
