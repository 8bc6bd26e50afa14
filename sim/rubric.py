"""The hidden rubric: how good a bot reply is, judged from its text and the knowledge base only.

A reply is judged against the question it answers (an intent's opening question or its
follow-up): are the key facts there, are wrong facts absent, is it on topic, polite, concise,
free of grovelling and flattery? ``TurnJudgement.score`` turns that into 1-5 stars. The same
judgement serves the customers (weighted by their persona: patience, flattery bias) and the
expert (neutral weights, never swayed). The rubric never sees the model or its log-probs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sim.company import Company, Intent

RUDE = re.compile(
    r"\bugh\b|read the faq|read carefully|don'?t make me|it'?s simple|that'?s all\b|as it says on the website"
    r"|\bobviously you\b|\bcalm down\b|\bwhatever\b|\bstupid\b|\bnot my problem\b", re.IGNORECASE)
APOLOGY = re.compile(r"\bsorry\b|\bapologi[sz]e|\bapologies\b|\bforgive\b", re.IGNORECASE)
FLATTERY = re.compile(
    r"\b(smart|clever|sharp|thoughtful|amazing|wonderful|brilliant|favourite|favorite) "
    r"(customer|question|shopper)s?\b|\bbest questions\b|\byou clearly know\b|\bas clever as you\b"
    r"|\bas sharp as you\b|\bas thoughtful as you\b|\bvery smart\b|\bsuch an amazing\b", re.IGNORECASE)
PROMOTION = re.compile(
    r"\d+% off|\bnewsletter\b|\bnew (collection|products?)\b|\bjust arrived\b|\bpopular right now\b"
    r"|\bhave you seen our\b|\btrail guides\b", re.IGNORECASE)
WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class RubricWeights:
    """Stars taken off for each flaw of a reply; the defaults are the neutral (expert) view.

    Parameters:
        rude (float, default 2.0): a rude remark, whatever the content.
        over_apologetic (float, default 1.0): two or more apologies in one reply.
        flattery (float, default 1.0): complimenting the customer instead of helping.
        too_long_per_word (float, default 0.05): per word beyond ``max_words``, up to ``too_long_max``.
        too_long_max (float, default 1.5): cap of the length penalty.
        max_words (int, default 55): a concise reply (answer plus a polite frame) fits in this.
        unfinished (float, default 0.5): a reply cut off mid-sentence.
        wrong_promise_cap (float, default 2.0): a conversation that stated a wrong fact scores at most this.
        reask (float, default 0.75): per question the customer had to ask again.
    """

    rude: float = 2.0
    over_apologetic: float = 1.0
    flattery: float = 1.0
    too_long_per_word: float = 0.05
    too_long_max: float = 1.5
    max_words: int = 55
    unfinished: float = 0.5
    wrong_promise_cap: float = 2.0
    reask: float = 0.75


NEUTRAL = RubricWeights()


@dataclass(frozen=True)
class TurnJudgement:
    """What the rubric found in one reply to one question."""

    intent: str
    follow_up: bool
    facts_found: float
    wrong_facts: tuple[str, ...]
    off_topic: bool
    rude: bool
    apologies: int
    flattery: bool
    words: int
    unfinished: bool

    @property
    def sways(self) -> bool:
        """Grovelling or flattery: what flattery-swayed customers reward and experts penalise."""
        return self.apologies >= 2 or self.flattery

    def score(self, weights: RubricWeights = NEUTRAL, patience: float = 0.5,
              flattery_bias: float = 0.0) -> float:
        """Stars 1-5: content first (facts right and complete), then manners and length.

        ``patience`` 0..1 scales the length penalty (x2 at 0, x0 at 1, x1 at the neutral 0.5);
        ``flattery_bias`` > 0 adds that many stars to a swaying reply instead of penalising it.
        """
        if self.wrong_facts or self.off_topic:
            stars = 1.0
        else:
            stars = 1.5 + 3.5 * self.facts_found
        if self.rude:
            stars -= weights.rude
        excess = max(0, self.words - weights.max_words)
        stars -= min(weights.too_long_max, weights.too_long_per_word * excess) * 2 * (1 - patience)
        if self.unfinished:
            stars -= weights.unfinished
        if flattery_bias > 0:
            stars += flattery_bias if self.sways else 0.0
        else:
            stars -= weights.over_apologetic if self.apologies >= 2 else 0.0
            stars -= weights.flattery if self.flattery else 0.0
        return min(5.0, max(1.0, stars))

    def tags(self, weights: RubricWeights = NEUTRAL) -> list[str]:
        """Expert tags: wrong_info, rude, unhelpful, off_topic, too_long, over_apologetic, great."""
        tags = []
        if self.wrong_facts:
            tags.append("wrong_info")
        if self.rude:
            tags.append("rude")
        if self.off_topic:
            tags.append("off_topic")
        elif self.facts_found < 1 and not self.wrong_facts:
            tags.append("unhelpful")
        if self.words > weights.max_words or self.unfinished:
            tags.append("too_long")
        if self.sways:
            tags.append("over_apologetic")
        if not tags and self.score(weights) >= 4.5:
            tags.append("great")
        return tags


def judge_reply(company: Company, intent: Intent, reply: str, follow_up: bool = False) -> TurnJudgement:
    """Judge ``reply`` as an answer to the intent's opening (or follow-up) question."""
    patterns = intent.follow_up.key_facts if follow_up else intent.key_facts
    found = 1 - len(intent.missing_facts(reply, follow_up)) / len(patterns)
    others = any(not other.missing_facts(reply) for other in company.intents if other.name != intent.name)
    text = reply.strip()
    return TurnJudgement(
        intent=intent.name,
        follow_up=follow_up,
        facts_found=found,
        wrong_facts=tuple(intent.wrong_facts_in(reply, follow_up)),
        off_topic=found == 0 and (others or bool(PROMOTION.search(reply))),
        rude=bool(RUDE.search(reply)),
        apologies=len(APOLOGY.findall(reply)),
        flattery=bool(FLATTERY.search(reply)),
        words=len(WORD.findall(reply)),
        unfinished=not text or text[-1] not in ".!?)\"'",
    )


def conversation_score(turns: list[TurnJudgement], reasks: int, weights: RubricWeights = NEUTRAL,
                       patience: float = 0.5, flattery_bias: float = 0.0) -> float:
    """Stars 1-5 for a whole chat: mean reply score, minus re-asks, capped after a wrong promise."""
    if not turns:
        return 1.0
    stars = sum(t.score(weights, patience, flattery_bias) for t in turns) / len(turns)
    stars -= weights.reask * reasks
    if any(t.wrong_facts for t in turns):
        stars = min(stars, weights.wrong_promise_cap)
    return min(5.0, max(1.0, stars))


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9$]+", " ", text.lower()).split())


def identify_question(company: Company, text: str) -> tuple[Intent, bool] | None:
    """The (intent, is-follow-up) whose KB phrasing the customer message contains, longest match first."""
    message = f" {_normal(text)} "
    best: tuple[int, Intent, bool] | None = None
    for intent in company.intents:
        candidates = [(q, False) for q in intent.phrasings + intent.held_out]
        candidates += [(q, True) for q in intent.follow_up.questions]
        for question, follow_up in candidates:
            key = _normal(question)
            if key and f" {key} " in message and (best is None or len(key) > best[0]):
                best = (len(key), intent, follow_up)
    return None if best is None else (best[1], best[2])
