"""The trainer's export: bot turns, with their feedback, of conversations whose feedback changed after a watermark.

Only replies the model generated are exported unless asked otherwise: a fallback reply (the fixed
decline when no help article fits) has no prompt, tokens or log-probs and is no sample of the policy
(its conversation's other turns still carry the conversation's rating).
"""

from __future__ import annotations

import redis

from feedback_store.annotations import Annotations
from feedback_store.conversations import parse_conversation, parse_turn
from feedback_store.keys import Keys
from feedback_store.records import BotTurn, CustomerTurn, TurnWithFeedback


class FeedbackExport:
    """The trainer's read side. The watermark is the feedback sequence number."""

    def __init__(self, client: redis.Redis, keys: Keys, annotations: Annotations):
        self._r = client
        self._keys = keys
        self._annotations = annotations

    def watermark(self) -> int:
        """The newest feedback sequence number (0 when there is none)."""
        return int(self._r.get(self._keys.feedback_seq()) or 0)

    def export(self, after: int = 0, until: int | None = None, limit: int = 10_000,
               include_fallbacks: bool = False) -> tuple[list[TurnWithFeedback], int]:
        """Bot turns of conversations whose rating or annotations changed in ``(after, until]``;
        fallback replies only with ``include_fallbacks``.

        Returns the turns and the watermark they reach; pass it as ``after`` next time.
        """
        upper = "+inf" if until is None else until
        entries = self._r.zrangebyscore(self._keys.feedback_log(), f"({after}", upper,
                                        start=0, num=limit, withscores=True)
        turns: list[TurnWithFeedback] = []
        reached = after
        for conv_id, seq in entries:
            reached = max(reached, int(seq))
            turns.extend(self.for_conversation(conv_id, include_fallbacks))
        return turns, reached

    def for_conversation(self, conv_id: str, include_fallbacks: bool = False) -> list[TurnWithFeedback]:
        """Every bot turn of one conversation (fallback replies only if asked) with the feedback it has."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self._keys.conversation(conv_id))
        pipe.lrange(self._keys.turns(conv_id), 0, -1)
        fields, raw_turns = pipe.execute()
        if not fields:
            return []
        conv = parse_conversation(fields)
        annotations = self._annotations.for_conversation(conv_id)
        turns, last_customer = [], ""
        for index, raw in enumerate(raw_turns):
            turn = parse_turn(index, raw)
            if isinstance(turn, CustomerTurn):
                last_customer = turn.text
            elif isinstance(turn, BotTurn) and (turn.sampled or include_fallbacks):
                turns.append(TurnWithFeedback(
                    conversation_id=conv_id, turn=turn, customer_text=last_customer,
                    csat=conv.csat, annotations=annotations.get(index, []),
                    conversation_started_at=conv.created_at, csat_weight=conv.csat_weight, rater=conv.rater,
                ))
        return turns
