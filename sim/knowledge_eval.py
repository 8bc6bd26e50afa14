"""How well retrieval finds the demo shop's articles, measured on the shop's own questions.

Probes: every seen and every held-out phrasing of every intent (expected: the intent's
article), every follow-up question searched after each of its intent's opening phrasings (the
query ``customer_query`` builds from the two), the questions of articles that answer no intent
(``questions`` in ``articles.json``), and the out-of-scope questions: general ones, which should
find nothing, and ones on shop words, which often find a passage the reply should decline from.
For an intent's question, the passage is right when the best article is its own and the
paragraph shown states every fact the question's answers use. The seen and held-out phrasings
are also probed as each persona writes them (greetings, "I need an answer now", "Thanks!").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from loopdesk.articles import VersionedArticle
from loopdesk.knowledge import KnowledgeIndex, customer_query, passage_text, plain_text
from loopdesk.knowledge_files import read_articles
from sim.company import Company, load_company, states
from sim.knowledge import KNOWLEDGE_DIR, fact_values, load_templates, out_of_scope_questions, template_for

Kind = Literal["seen", "held_out", "seen_dressed", "held_out_dressed", "follow_up", "extra", "out_of_scope",
               "shop_words"]
KINDS: tuple[Kind, ...] = ("seen", "held_out", "seen_dressed", "held_out_dressed", "follow_up", "extra",
                           "out_of_scope", "shop_words")
ANSWERED: tuple[Kind, ...] = ("seen", "held_out", "seen_dressed", "held_out_dressed", "follow_up")


@dataclass(frozen=True)
class Probe:
    """One question, the query searched for it, and the article that answers it (None: none does)."""

    kind: Kind
    question: str
    query: str
    expected: str | None
    needs: tuple[str, ...] = ()


@dataclass
class KindReport:
    """Ranks and top-1 scores of one kind of probe."""

    kind: Kind
    top1: int = 0
    top3: int = 0
    passage: int = 0
    scores: list[float] = field(default_factory=list)
    misses: list[tuple[Probe, list[str]]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def top1_rate(self) -> float:
        return self.top1 / self.n if self.n else 0.0

    @property
    def top3_rate(self) -> float:
        return self.top3 / self.n if self.n else 0.0

    @property
    def passage_rate(self) -> float:
        """Share whose top-1 passage is the expected article's paragraph stating the answer's facts."""
        return self.passage / self.n if self.n else 0.0

    def share_at_least(self, min_score: float) -> float:
        """Share of probes whose best score reaches ``min_score`` (for in-scope: answered at all)."""
        return float(np.mean([s >= min_score for s in self.scores])) if self.scores else 0.0

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.scores, q)) if self.scores else 0.0


def demo_index() -> KnowledgeIndex:
    """A retrieval index of the shop's committed knowledge folder, every article at version 1."""
    return KnowledgeIndex([VersionedArticle(**d.model_dump(), version=1) for d in read_articles(KNOWLEDGE_DIR)])


def probes(company: Company | None = None) -> list[Probe]:
    """Every probe of the demo shop, in a fixed order (``*_dressed``: each phrasing written the way
    each persona writes, greetings and all, drawn with a fixed seed)."""
    company = company or load_company()
    rng = random.Random(0)
    found: list[Probe] = []
    for intent in company.intents:
        article = template_for(intent.name).id
        opening, follow_up = tuple(sorted(intent.used_facts())), tuple(sorted(intent.used_facts(True)))
        found += [Probe("seen", q, q, article, opening) for q in intent.phrasings]
        found += [Probe("held_out", q, q, article, opening) for q in intent.held_out]
        for kind, pool in (("seen_dressed", intent.phrasings), ("held_out_dressed", intent.held_out)):
            found += [Probe(kind, q, q, article, opening) for p in pool for q in
                      (persona.phrase(p, rng) for persona in company.personas)]
        found += [Probe("follow_up", f"{first} → {q}", customer_query([first, q]), article, follow_up)
                  for q in intent.follow_up.questions for first in intent.phrasings + intent.held_out]
    for template in load_templates():
        if template.intent is None:
            found += [Probe("extra", q, q, template.id) for q in template.questions]
    for kind, source in (("out_of_scope", "general"), ("shop_words", "shop_words")):
        found += [Probe(kind, q, q, None) for held_out in (False, True)
                  for q in out_of_scope_questions(held_out, (source,))]
    return found


def evaluate(index: KnowledgeIndex, company: Company | None = None) -> dict[Kind, KindReport]:
    """Top-1 and top-3 hits of the expected article, right passages, and the top-1 score, for every probe
    (``index`` holds the shop's articles with their canonical facts)."""
    company = company or load_company()
    reports = {kind: KindReport(kind) for kind in KINDS}
    for probe in probes(company):
        hits = index.search(probe.query, k=3, min_score=0.0)
        ranked = [h.id for h in hits]
        report = reports[probe.kind]
        report.scores.append(hits[0].score if hits else 0.0)
        if probe.expected is None:
            continue
        report.top1 += ranked[:1] == [probe.expected]
        report.top3 += probe.expected in ranked
        if ranked[:1] == [probe.expected]:
            shown = passage_text(index.passages(hits[:1])[0])
            template = next(t for t in load_templates() if t.id == probe.expected)
            values = fact_values(template, company)
            report.passage += all(states(values[name], shown) for name in probe.needs)
        if ranked[:1] != [probe.expected]:
            report.misses.append((probe, ranked))
    return reports


def generated_articles(n: int, rng: random.Random) -> list[VersionedArticle]:
    """``n`` articles: the demo shop's and synthetic ones drawn from their words and made-up product
    names (a large knowledge base to time retrieval on)."""
    demo = list(demo_index().articles.values())
    words = re.findall(r"[A-Za-z][a-z]+", " ".join(plain_text(a.body) for a in demo))
    products = [f"{rng.choice(['Trail', 'Summit', 'Ridge', 'Canyon', 'Fjord'])}{i}" for i in range(n)]
    made = []
    for i in range(n - len(demo)):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(60, 150)))
        made.append(VersionedArticle(id=f"generated-{i}", title=f"{products[i]} {rng.choice(words)}",
                                     body=f"The {products[i]} {body}.", tags=[], version=1))
    return demo + made
