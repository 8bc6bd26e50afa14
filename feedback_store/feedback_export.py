"""The trainer's export: bot turns, with their feedback, of conversations whose feedback changed after a watermark.

Only replies the model generated are exported unless asked otherwise: a fallback reply (the fixed
decline when no help article fits) has no prompt, tokens or log-probs and is no sample of the policy
(its conversation's other turns still carry the conversation's rating).

A conversation handed to a person carries its handoffs on the bot turns before each one
(``TurnWithFeedback.handoff``): every such turn knows a handoff followed, why (its reason) and which
bot turn led to it (``led_by``: the last one before it), and that turn carries the agent's first
reply after it, a demonstration of what the bot should have said. A bot turn is still the only
exported sample: agent turns are not the policy's.
"""

from __future__ import annotations

import redis

from feedback_store.annotations import Annotations
from feedback_store.conversations import parse_conversation, parse_turn
from feedback_store.handoffs import Handoffs
from feedback_store.keys import Keys
from feedback_store.records import AgentTurn, BotTurn, CustomerTurn, Handoff, HandoffFeedback, Turn, TurnWithFeedback


def handoff_feedback(turns: list[Turn], handoffs: list[Handoff]) -> dict[int, HandoffFeedback]:
    """Bot turn index → the first handoff after it; on the last bot turn before a handoff, the first agent
    reply between that handoff and the next one."""
    out: dict[int, HandoffFeedback] = {}
    ordered = sorted(handoffs, key=lambda h: h.turn_index)
    start = 0
    for handoff, following in zip(ordered, [h.turn_index for h in ordered[1:]] + [len(turns)]):
        bot_turns = [t for t in turns[start:handoff.turn_index] if isinstance(t, BotTurn)]
        agent = next((t for t in turns[handoff.turn_index + 1:following] if isinstance(t, AgentTurn)), None)
        for turn in bot_turns:
            led = turn is bot_turns[-1]
            out[turn.index] = HandoffFeedback(
                reason=handoff.reason, requested_at=handoff.requested_at, led_to_handoff=led,
                led_by=bot_turns[-1].index, agent_reply=agent.text if led and agent else "",
                agent_id=agent.agent_id if led and agent else "")
        start = handoff.turn_index + 1
    return out


class FeedbackExport:
    """The trainer's read side. The watermark is the feedback sequence number."""

    def __init__(self, client: redis.Redis, keys: Keys, annotations: Annotations, handoffs: Handoffs):
        self._r = client
        self._keys = keys
        self._annotations = annotations
        self._handoffs = handoffs

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
        parsed = [parse_turn(index, raw) for index, raw in enumerate(raw_turns)]
        handed_off = handoff_feedback(parsed, self._handoffs.history(conv_id)) if conv.handoffs else {}
        turns, last_customer = [], ""
        for index, turn in enumerate(parsed):
            if isinstance(turn, CustomerTurn):
                last_customer = turn.text
            elif isinstance(turn, BotTurn) and (turn.sampled or include_fallbacks):
                turns.append(TurnWithFeedback(
                    conversation_id=conv_id, turn=turn, customer_text=last_customer,
                    csat=conv.csat, annotations=annotations.get(index, []),
                    conversation_started_at=conv.created_at, csat_weight=conv.csat_weight, rater=conv.rater,
                    handoff=handed_off.get(index),
                ))
        return turns
