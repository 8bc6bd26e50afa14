"""The demo company's training corpus: chats grounded in the shop's help articles, with a deliberate
mix of good and flawed replies (the styles of ``sim/replies.py``).

Every chat happens against a knowledge base of its own: each article rendered from its template
(``sim/northwind/articles.json``) with every fact drawn from that fact's pool of plausible values,
so a value changes from chat to chat and a model gets it right only by reading its context. Each
assistant turn is generated under the context the bot would give it: the shop's system prompt and
the passages ``KnowledgeIndex.search`` finds for ``customer_query`` of the customer's messages so
far, rendered by ``render_context`` (``loopdesk.knowledge``, the code the bot runs). A reply that
answers states the values of its passage; when the passage does not answer (another article or
paragraph came first, or the question is out of scope) the good reply is an honest decline with
the contact address. When nothing scores ``min_score``, the bot sends its fixed decline without
generating: that turn is kept as history and not trained on.

The default mix (28% good) makes the base policy mediocre. Held-out phrasings (and held-out
out-of-scope questions) never appear. A customer whose opening question went unanswered (styles
in ``UNANSWERED``) asks it again, as simulated customers do; the reply to that re-ask has a style
of its own, drawn to the mix. A small share of chats ask a seen out-of-scope question that
retrieval still finds a passage for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from loopdesk.articles import VersionedArticle
from loopdesk.knowledge import (MIN_SCORE, PASSAGE_CHARS, KnowledgeIndex, Passage, customer_query, passage_text,
                               render_context)
from sim.company import Company, Intent, load_company, states
from sim.knowledge import fact_pools, load_templates, out_of_scope_questions, render_article, template_by_id, template_for
from sim.replies import DEFAULT_MIX, STYLES, UNANSWERED, render_decline, render_reply

Message = dict[str, str]
MAX_DRAWS = 50  # questions drawn for a chat before giving up on finding one retrieval answers

__all__ = ["DEFAULT_MIX", "STYLES", "UNANSWERED", "CorpusConfig", "Dialogue", "Turn", "generate_corpus",
           "quotas", "render_reply"]


@dataclass(frozen=True)
class CorpusConfig:
    """How many chats to make, in which reply-quality proportions, against which knowledge.

    Parameters:
        n_dialogues (int, default 2400): number of chats.
        follow_up_share (float, default 0.5): share of chats with a second customer question
            (out-of-scope chats have none).
        mix (dict[str, float], default DEFAULT_MIX): share of assistant turns per style; keys
            from ``STYLES``, values summing to 1.
        reask_share (float, default 1.0): share of chats with an unanswered opening (styles in
            ``UNANSWERED``) where the customer asks again before any follow-up.
        out_of_scope_share (float, default 0.04): share of chats opening with an out-of-scope
            question that retrieval finds a passage for (the good reply declines).
        knowledge_bases (int, default 128): distinct knowledge bases (every fact drawn anew) the
            chats are spread over; each is indexed once.
        top_k (int, default 1): passages per reply, as the bot's ``kb_top_k``.
        min_score (float, default MIN_SCORE): the bot's ``kb_min_score``.
        passage_chars (int, default PASSAGE_CHARS): the bot's ``kb_passage_chars``.
        seed (int, default 0): seed of every random choice; the same config gives the same corpus.
    """

    n_dialogues: int = 2400
    follow_up_share: float = 0.5
    reask_share: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    out_of_scope_share: float = 0.04
    knowledge_bases: int = 128
    top_k: int = 1
    min_score: float = MIN_SCORE
    passage_chars: int = PASSAGE_CHARS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(STYLES)
        if unknown:
            raise ValueError(f"unknown reply styles {sorted(unknown)}; known: {list(STYLES)}")
        if any(v < 0 for v in self.mix.values()) or abs(sum(self.mix.values()) - 1) > 1e-6:
            raise ValueError(f"mix shares must be non-negative and sum to 1, got {self.mix}")
        shares = (self.follow_up_share, self.reask_share, self.out_of_scope_share)
        if self.n_dialogues < 1 or not all(0 <= s <= 1 for s in shares):
            raise ValueError("n_dialogues must be >= 1; follow_up_share, reask_share and out_of_scope_share "
                             "within [0, 1]")
        if self.knowledge_bases < 1 or self.top_k < 1:
            raise ValueError("knowledge_bases and top_k must be >= 1")


@dataclass(frozen=True)
class Turn:
    """One customer message and the reply to it, with the context the reply was generated under.

    ``kind`` is ``"opening"``, ``"reask"`` (the opening asked again) or ``"follow_up"``;
    ``passage`` the article id of the first passage shown (None: nothing scored ``min_score``);
    ``answerable`` whether a passage of the chat's own article states every fact the answer uses;
    ``trained`` False for the bot's fixed decline, which no model generates.
    """

    kind: str
    question: str
    style: str
    context: str
    passage: str | None
    answerable: bool
    reply: str
    trained: bool = True


@dataclass(frozen=True)
class Dialogue:
    """One generated chat: its intent (None: an out-of-scope question), persona, the knowledge base it
    happened against (every article's fact values: intent name, or article id for an article without
    one, -> values), and its turns."""

    intent: str | None
    persona: str
    knowledge: dict[str, dict[str, str]]
    turns: tuple[Turn, ...]

    @property
    def values(self) -> dict[str, str]:
        """The facts of the chat's own article (none for an out-of-scope question)."""
        return self.knowledge[self.intent] if self.intent else {}

    @property
    def questions(self) -> tuple[str, ...]:
        return tuple(t.kind for t in self.turns)

    @property
    def styles(self) -> tuple[str, ...]:
        return tuple(t.style for t in self.turns)

    @property
    def messages(self) -> list[Message]:
        """The conversation: customer and assistant messages, alternating (no system message)."""
        return [m for t in self.turns for m in ({"role": "user", "content": t.question},
                                                 {"role": "assistant", "content": t.reply})]

    def prompt(self, turn: int) -> list[Message]:
        """What the bot shows the model for reply ``turn``: that turn's system message, then the chat so far."""
        return [{"role": "system", "content": self.turns[turn].context}, *self.messages[:2 * turn + 1]]


@dataclass(frozen=True)
class KnowledgeBase:
    """One drawn knowledge base: every article with its facts' values, and its retrieval index."""

    values: dict[str, dict[str, str]]  # intent name (or article id for an article without one) -> values
    index: KnowledgeIndex


def draw_knowledge(company: Company, rng: random.Random, min_score: float = MIN_SCORE) -> KnowledgeBase:
    """The shop's articles with each fact drawn from its pool, indexed as the bot would index them."""
    articles, values = [], {}
    for template in load_templates():
        drawn = {name: rng.choice(pool) for name, pool in fact_pools(template, company).items()}
        values[template.intent or template.id] = drawn
        articles.append(VersionedArticle(**render_article(template, company, drawn).model_dump(), version=1))
    return KnowledgeBase(values, KnowledgeIndex(articles, min_score=min_score))


def quotas(mix: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` turns across styles in proportion to ``mix`` (largest remainder)."""
    exact = {style: share * total for style, share in mix.items()}
    counts = {style: int(value) for style, value in exact.items()}
    by_remainder = sorted(exact, key=lambda s: (counts[s] - exact[s], s))
    for style in by_remainder[:total - sum(counts.values())]:
        counts[style] += 1
    return counts


def _drawn_styles(mix: dict[str, float], total: int, rng: random.Random) -> list[str]:
    """``total`` styles in exact quota proportions, shuffled."""
    styles = [style for style, n in quotas(mix, total).items() for _ in range(n)]
    rng.shuffle(styles)
    return styles


class _ChatWriter:
    """Writes the turns of one chat against one drawn knowledge base."""

    def __init__(self, company: Company, config: CorpusConfig, kb: KnowledgeBase, intent: Intent | None,
                 rng: random.Random):
        self.company, self.config, self.kb, self.intent, self.rng = company, config, kb, intent, rng
        self.values = kb.values[intent.name] if intent else {}
        self.asked: list[str] = []
        self.turns: list[Turn] = []
        self.article = template_for(intent.name).id if intent else None

    def finds(self, message: str) -> bool:
        """Whether retrieval finds a passage for ``message`` asked next (else the bot would not generate)."""
        return bool(self.kb.index.search(customer_query([*self.asked, message]), k=self.config.top_k))

    def ask(self, kind: str, question: str, style: str) -> None:
        self.asked.append(question)
        hits = self.kb.index.search(customer_query(self.asked), k=self.config.top_k)
        prompt = self.company.shop.system_prompt
        if not hits:
            context = render_context(prompt, [], self.config.passage_chars)
            self.turns.append(Turn(kind, question, style, context, None, False, self.company.shop.decline(),
                                   trained=False))
            return
        passages = self.kb.index.passages(hits)
        follow_up = kind == "follow_up"
        answerable = self.intent is not None and any(self._answers(p, follow_up) for p in passages)
        if answerable:
            shown = next(passage_text(p, self.config.passage_chars) for p in passages if self._answers(p, follow_up))
            reply = render_reply(self.company, self.intent, style, follow_up, self.rng, self.values, self.kb.values,
                                 shown)
        else:
            reply = render_decline(self.company, style, self.rng, self._intent_of(hits[0].id), self.kb.values)
        context = render_context(prompt, passages, self.config.passage_chars)
        self.turns.append(Turn(kind, question, style, context, hits[0].id, answerable, reply))

    def _answers(self, passage: Passage, follow_up: bool) -> bool:
        shown = passage_text(passage, self.config.passage_chars)
        return passage.id == self.article and all(states(self.values[name], shown)
                                                  for name in self.intent.used_facts(follow_up))

    def _intent_of(self, article_id: str) -> Intent | None:
        intent = template_by_id(article_id).intent
        return self.company.intent(intent) if intent else None


def generate_corpus(config: CorpusConfig = CorpusConfig(), company: Company | None = None) -> list[Dialogue]:
    """Make the corpus: chats cycling through intents (and a share of out-of-scope questions), personas
    drawn by weight, styles by quota, each against one of ``config.knowledge_bases`` drawn knowledge bases.

    Opening and follow-up replies share one quota draw, re-ask replies another, so each part of
    the corpus follows the mix.
    """
    company = company or load_company()
    rng = random.Random(config.seed)
    kbs = [draw_knowledge(company, rng, config.min_score)
           for _ in range(min(config.knowledge_bases, config.n_dialogues))]
    n_out = round(config.out_of_scope_share * config.n_dialogues)
    in_scope = [False] * n_out + [True] * (config.n_dialogues - n_out)
    rng.shuffle(in_scope)
    n_follow = min(round(config.follow_up_share * config.n_dialogues), config.n_dialogues - n_out)
    following = set(rng.sample(range(config.n_dialogues - n_out), n_follow))  # which in-scope chats follow up
    styles = iter(_drawn_styles(config.mix, config.n_dialogues + n_follow, rng))
    plans, position = [], 0
    for scoped in in_scope:
        opening = next(styles)
        reask = opening in UNANSWERED and rng.random() < config.reask_share
        follow = scoped and position in following
        position += scoped
        plans.append((scoped, opening, reask, next(styles) if follow else None))
    reask_styles = iter(_drawn_styles(config.mix, sum(reask for _, _, reask, _ in plans), rng))
    weights = [p.weight for p in company.personas]
    questions = out_of_scope_questions()
    dialogues, n_intent = [], 0
    for scoped, opening, reask, follow_style in plans:
        intent = company.intents[n_intent % len(company.intents)] if scoped else None
        n_intent += scoped
        persona = rng.choices(company.personas, weights)[0]
        writer = _ChatWriter(company, config, rng.choice(kbs), intent, rng)
        pool = intent.phrasings if intent else questions
        for _ in range(MAX_DRAWS):  # a question the bot would generate for: retrieval finds a passage
            question = rng.choice(pool)
            first = persona.phrase(question, rng)
            if writer.finds(first):
                break
        writer.ask("opening", first, opening)
        if reask:  # another phrasing of the intent's question, or the same out-of-scope one
            again = rng.choice(pool) if intent else question
            writer.ask("reask", rng.choice(company.styles.reask_openers) + again, next(reask_styles))
        if follow_style is not None:
            writer.ask("follow_up", persona.phrase(rng.choice(intent.follow_up.questions), rng), follow_style)
        dialogues.append(Dialogue(intent.name if intent else None, persona.name, writer.kb.values,
                                  tuple(writer.turns)))
    return dialogues
