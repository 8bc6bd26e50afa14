"""The reward builder: human feedback on bot turns → one scalar reward per turn.

Formula (every weight lives in ``RewardBuilderConfig``):

0. Which CSAT counts: not a rating stored beyond the per-client cap (``csat_weight`` 0), and of
   each client's (``rater``; none: the conversation alone) rated conversations in the batch only
   the ``max_csat_per_client`` whose ids hash lowest; the others' turns keep their expert
   feedback, if any, and lose the CSAT. One client, however many conversations it rates, moves
   the rewards as much as that many customers at most.
1. CSAT 1..5 of the conversation → ``(csat - 3) / 2`` in [-1, 1], given to each of its bot turns.
2. Expert scores -2..+2 on the turn → ``score / 2``, averaged over experts.
3. Both present: ``expert_weight * expert + (1 - expert_weight) * csat``; one present: that one;
   neither (tags only): 0.
4. Add the penalty (or bonus) of each distinct tag and, on a bot turn before a handoff to a person
   (``handoff``: the reason, any of them), ``handoff_penalty``; then clamp to [-1, 1]. Every bot turn
   between the previous handoff (or the start) and this one gets the same penalty, as every turn gets
   its conversation's CSAT: which of them failed the customer is the experts' to say.
5. Optionally whiten across the batch (mean 0, std 1).

Turns with no CSAT, no expert score, no tag and no handoff after them carry no feedback and are left out.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from trainer.config import RewardBuilderConfig

CSAT_RANGE = (1, 5)
EXPERT_RANGE = (-2, 2)


@dataclass
class FeedbackTurn:
    """The feedback known about one bot turn of a conversation."""

    conversation_id: str
    turn_index: int
    csat: int | None = None
    expert_scores: list[int] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    rater: str = ""
    csat_weight: float = 1.0
    handoff: str = ""  # the reason of the handoff to a person that followed the turn; "" none

    def __post_init__(self) -> None:
        if self.csat is not None and not CSAT_RANGE[0] <= self.csat <= CSAT_RANGE[1]:
            raise ValueError(f"csat must lie in {CSAT_RANGE}, got {self.csat}")
        for score in self.expert_scores:
            if not EXPERT_RANGE[0] <= score <= EXPERT_RANGE[1]:
                raise ValueError(f"expert scores must lie in {EXPERT_RANGE}, got {score}")

    @property
    def has_feedback(self) -> bool:
        """Whether anyone said anything about this turn."""
        return self.csat is not None or bool(self.expert_scores) or bool(self.tags) or bool(self.handoff)


@dataclass(frozen=True)
class TurnReward:
    """The reward of one bot turn, as PPO and the reward model consume it."""

    conversation_id: str
    turn_index: int
    reward: float


def csat_reward(csat: int) -> float:
    """Map a 1..5 rating onto [-1, 1]: 3 stars is neutral."""
    return (csat - 3) / 2


def expert_reward(scores: list[int]) -> float:
    """Mean of the experts' -2..+2 scores, mapped onto [-1, 1]."""
    return sum(scores) / (2 * len(scores))


def turn_reward(turn: FeedbackTurn, config: RewardBuilderConfig) -> float:
    """The clamped, un-whitened reward of one turn that has feedback."""
    if turn.expert_scores and turn.csat is not None:
        w = config.expert_weight
        blended = w * expert_reward(turn.expert_scores) + (1 - w) * csat_reward(turn.csat)
    elif turn.expert_scores:
        blended = expert_reward(turn.expert_scores)
    elif turn.csat is not None:
        blended = csat_reward(turn.csat)
    else:
        blended = 0.0
    blended += sum(config.tag_penalties.get(tag, 0.0) for tag in set(turn.tags))
    if turn.handoff:
        blended += config.handoff_penalty
    return max(-1.0, min(1.0, blended))


def whiten(values: list[float], eps: float = 1e-8) -> list[float]:
    """Shift and scale to mean 0, std 1 (population std); a constant batch maps to zeros."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / (std + eps) for v in values]


def _csat_rank(conversation_id: str) -> str:
    return hashlib.sha256(f"csat:{conversation_id}".encode()).hexdigest()


def counted_csat(turns: Sequence[FeedbackTurn], per_client: int) -> set[str]:
    """The conversations whose CSAT counts (step 0 of the formula; ``per_client`` 0: no per-client cap)."""
    by_client: dict[str, set[str]] = defaultdict(set)
    for turn in turns:
        if turn.csat is not None and turn.csat_weight > 0:
            by_client[turn.rater or f"conversation:{turn.conversation_id}"].add(turn.conversation_id)
    return {c for convs in by_client.values() for c in sorted(convs, key=_csat_rank)[:per_client or None]}


def build_rewards(turns: Iterable[FeedbackTurn], config: RewardBuilderConfig) -> list[TurnReward]:
    """Rewards for every turn with feedback, in input order; turns without feedback are dropped."""
    turns = list(turns)
    counted = counted_csat(turns, config.max_csat_per_client)
    turns = [t if t.csat is None or t.conversation_id in counted else replace(t, csat=None) for t in turns]
    rated = [t for t in turns if t.has_feedback]
    rewards = [turn_reward(t, config) for t in rated]
    if config.whiten and rewards:
        rewards = whiten(rewards)
    return [TurnReward(t.conversation_id, t.turn_index, r) for t, r in zip(rated, rewards)]
