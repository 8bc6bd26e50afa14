"""The simulated expert: annotates low-rated transcripts turn by turn through the expert console's API,
and audits a sample of the highly rated ones.

For every bot turn it finds the question being answered (the KB phrasing the customer's
message contains; otherwise the chat's intent so far), judges the reply with the neutral
rubric — never swayed by flattery or apologies — and posts a score -2..+2, tags, the KB's
canonical reply as the correction (unless the reply was already right) and a short note. The
bot's notices that it hands the chat to a person, and the person's replies, are no bot answers
and are left alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from sim.client import ExpertAPI
from sim.company import Company, Intent
from sim.rubric import NEUTRAL, RubricWeights, TurnJudgement, identify_question, judge_reply


@dataclass(frozen=True)
class TurnReview:
    """One annotation the expert posts for one bot turn."""

    turn_index: int
    score: int
    tags: list[str]
    corrected_reply: str
    note: str


def expert_score(judgement: TurnJudgement, weights: RubricWeights = NEUTRAL) -> int:
    """The rubric's 1-5 stars mapped to the annotation scale -2..+2 (3 stars is 0)."""
    return min(2, max(-2, math.floor(judgement.score(weights) - 3 + 0.5)))


def _note(judgement: TurnJudgement) -> str:
    parts = []
    if judgement.wrong_facts:
        parts.append("states wrong facts: " + ", ".join(judgement.wrong_facts))
    if judgement.facts_found < 1:
        parts.append(f"gives {judgement.facts_found:.0%} of the key facts")
    return "; ".join(parts)


def review_transcript(company: Company, turns: list[dict[str, Any]],
                      weights: RubricWeights = NEUTRAL) -> list[TurnReview]:
    """Reviews of every bot answer whose question can be placed in the KB (``turns``: index, role, text, and
    a bot turn's ``source``); handoff notices and agents' turns are skipped."""
    reviews = []
    intent: Intent | None = None
    follow_up = False
    for turn in turns:
        if turn["role"] == "user":
            found = identify_question(company, turn["text"])
            intent, follow_up = found if found else (intent, False)
            continue
        if intent is None or turn["role"] != "assistant" or turn.get("source") == "handoff":
            continue
        judgement = judge_reply(company, intent, turn["text"], follow_up)
        score = expert_score(judgement, weights)
        canonical = intent.canonical_follow_up_reply if follow_up else intent.canonical_reply
        reviews.append(TurnReview(turn["index"], score, judgement.tags(weights),
                                  "" if score == 2 else canonical, _note(judgement)))
    return reviews


PAGE = 100  # the queue API's largest page


def audited(conv_id: str, share: float) -> bool:
    """Whether the audit picks this conversation: a stable hash of its id below ``share``."""
    return int(hashlib.sha256(f"audit:{conv_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


class SimulatedExpert:
    """Works through the expert queue (low CSAT first) and annotates each bot turn over HTTP; can also
    audit a sample of the highly rated chats that queue never reaches."""

    def __init__(self, company: Company, api: ExpertAPI, csat_max: int = 3,
                 weights: RubricWeights = NEUTRAL):
        self.company = company
        self.api = api
        self.csat_max = csat_max
        self.weights = weights

    def review(self, conv_id: str) -> int:
        """Annotate every bot turn of one conversation; returns the turns annotated."""
        transcript = self.api.transcript(conv_id)
        reviews = review_transcript(self.company, transcript["turns"], self.weights)
        for review in reviews:
            self.api.annotate(conv_id, review.turn_index, review.score, review.tags, review.corrected_reply,
                              review.note)
        return len(reviews)

    def work(self, limit: int = 25) -> int:
        """Annotate up to ``limit`` unannotated conversations rated ``csat_max`` or lower; returns turns annotated."""
        annotated, seen = 0, set()
        while len(seen) < limit:
            page = self.api.queue(csat_max=self.csat_max, limit=min(PAGE, limit - len(seen)), include_annotated=False)
            fresh = [item for item in page if item["id"] not in seen]  # one with nothing to annotate stays queued
            if not fresh:
                break
            for item in fresh:
                seen.add(item["id"])
                annotated += self.review(item["id"])
        return annotated

    def audit(self, share: float) -> int:
        """Annotate the share ``share`` (picked by a stable hash of the id) of the unannotated conversations
        rated above ``csat_max``: flattery that pleased a swayed customer is only found there. Returns
        turns annotated; conversations left unannotated are paged past."""
        if share <= 0 or self.csat_max >= 5:
            return 0
        annotated, passed, seen = 0, 0, set()
        while True:
            page = self.api.queue(csat_min=self.csat_max + 1, csat_max=5, limit=PAGE, include_annotated=False,
                                  offset=passed)
            fresh = [item for item in page if item["id"] not in seen]
            if not fresh:
                return annotated
            for item in fresh:
                seen.add(item["id"])
                done = self.review(item["id"]) if audited(item["id"], share) else 0
                passed += done == 0  # still unannotated: the next page starts after it
                annotated += done
