"""The simulated expert: annotates low-rated transcripts turn by turn through the expert console's API,
and audits a sample of the highly rated ones.

For every bot turn it finds the question being answered (the KB phrasing, or out-of-scope
question, the customer's message contains; otherwise the chat's question so far), reads the
intent's help article from the help centre as it is now (once per article per transcript; facts
read back once per article version), judges the reply with the neutral rubric — never swayed by
flattery or apologies; an invented promise scores 1 — and posts a score -2..+2, tags, the
reference reply with the article's current facts as the correction (the shop's decline for an
out-of-scope question, or for an intent whose article is no longer published) unless the reply
was already right, and a short note. The bot's notices that it hands the chat to a person, and
the person's replies, are no bot answers and are left alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

from sim.client import ExpertAPI, HelpCentre
from sim.company import Company, Intent
from sim.knowledge import LiveFacts, template_for
from sim.rubric import (NEUTRAL, Question, RubricWeights, TurnJudgement, identify_question, judge_out_of_scope,
                        judge_reply)

Facts = Callable[[Intent], "dict[str, str] | None"]


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
    if judgement.promise:
        parts.append("promises an action nobody takes")
    if judgement.facts_found < 1:
        parts.append(f"gives {judgement.facts_found:.0%} of the key facts")
    return "; ".join(parts)


def shipped_facts(intent: Intent) -> dict[str, str]:
    """The intent's facts as its article was shipped (for reviews without a help centre)."""
    return dict(intent.facts)


def review_transcript(company: Company, turns: list[dict[str, Any]], weights: RubricWeights = NEUTRAL,
                      facts: Facts = shipped_facts) -> list[TurnReview]:
    """Reviews of every bot answer whose question can be placed (``turns``: index, role, text, and a bot
    turn's ``source``); ``facts`` gives an intent's facts as its article states them now (None: no
    article published for it). Handoff notices and agents' turns are skipped."""
    reviews = []
    question: Question | None = None
    known: dict[str, dict[str, str] | None] = {}
    for turn in turns:
        if turn["role"] == "user":
            found = identify_question(company, turn["text"])
            if found is not None:
                question = found
            elif question is not None:  # a message it cannot place: still the chat's question, not a follow-up
                question = Question(question.intent)
            continue
        if question is None or turn["role"] != "assistant" or turn.get("source") == "handoff":
            continue
        intent = question.intent
        if intent is not None and intent.name not in known:
            known[intent.name] = facts(intent)
        values = known.get(intent.name) if intent is not None else None
        if values is None:
            judgement, reference = judge_out_of_scope(company, turn["text"]), company.shop.decline()
        else:
            judgement = judge_reply(company, intent, turn["text"], question.follow_up, values)
            reference = intent.reference_reply(question.follow_up, values)
        score = expert_score(judgement, weights)
        reviews.append(TurnReview(turn["index"], score, judgement.tags(weights),
                                  "" if score == 2 else reference, _note(judgement)))
    return reviews


def help_centre_facts(help_centre: HelpCentre, live: LiveFacts) -> Facts:
    """An intent's facts as the help centre's article states them now (None: not published)."""
    def facts(intent: Intent) -> dict[str, str] | None:
        article = help_centre.article(template_for(intent.name).id)
        return None if article is None else live.of(intent, article)
    return facts


PAGE = 100  # the queue API's largest page


def audited(conv_id: str, share: float) -> bool:
    """Whether the audit picks this conversation: a stable hash of its id below ``share``."""
    return int(hashlib.sha256(f"audit:{conv_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


class SimulatedExpert:
    """Works through the expert queue (low CSAT first) and annotates each bot turn over HTTP; can also
    audit a sample of the highly rated chats that queue never reaches."""

    def __init__(self, company: Company, api: ExpertAPI, csat_max: int = 3,
                 weights: RubricWeights = NEUTRAL, facts: LiveFacts | None = None):
        self.company = company
        self.api = api
        self.csat_max = csat_max
        self.weights = weights
        self.facts = facts or LiveFacts()

    def review(self, conv_id: str) -> int:
        """Annotate every bot turn of one conversation against the help centre as it is now; returns
        the turns annotated."""
        transcript = self.api.transcript(conv_id)
        reviews = review_transcript(self.company, transcript["turns"], self.weights,
                                    help_centre_facts(self.api.help, self.facts))
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
