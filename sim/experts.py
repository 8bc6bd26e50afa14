"""The simulated expert: annotates low-rated transcripts turn by turn through the expert console's API.

For every bot turn it finds the question being answered (the KB phrasing the customer's
message contains; otherwise the chat's intent so far), judges the reply with the neutral
rubric — never swayed by flattery or apologies — and posts a score -2..+2, tags, the KB's
canonical reply as the correction (unless the reply was already right) and a short note.
"""

from __future__ import annotations

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
    """Reviews of every bot turn whose question can be placed in the KB (``turns``: index, role, text)."""
    reviews = []
    intent: Intent | None = None
    follow_up = False
    for turn in turns:
        if turn["role"] == "user":
            found = identify_question(company, turn["text"])
            intent, follow_up = found if found else (intent, False)
            continue
        if intent is None:
            continue
        judgement = judge_reply(company, intent, turn["text"], follow_up)
        score = expert_score(judgement, weights)
        canonical = intent.canonical_follow_up_reply if follow_up else intent.canonical_reply
        reviews.append(TurnReview(turn["index"], score, judgement.tags(weights),
                                  "" if score == 2 else canonical, _note(judgement)))
    return reviews


PAGE = 100  # the queue API's largest page


class SimulatedExpert:
    """Works through the expert queue (low CSAT first) and annotates each bot turn over HTTP."""

    def __init__(self, company: Company, api: ExpertAPI, csat_max: int = 3,
                 weights: RubricWeights = NEUTRAL):
        self.company = company
        self.api = api
        self.csat_max = csat_max
        self.weights = weights

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
                transcript = self.api.transcript(item["id"])
                for review in review_transcript(self.company, transcript["turns"], self.weights):
                    self.api.annotate(item["id"], review.turn_index, review.score, review.tags,
                                      review.corrected_reply, review.note)
                    annotated += 1
        return annotated
