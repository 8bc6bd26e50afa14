"""Probe of a base model on grounded prompts: does it answer from the passage in its context?

Every prompt is built as the bot builds it: the customer's question (dressed by a persona)
searched in a knowledge base with ``KnowledgeIndex`` and the passage rendered into the system
message by ``render_context``; replies are sampled at the bot's serving temperature (the default
``LOOPDESK_TEMPERATURE``) within its reply budget. Questions retrieval finds nothing for get the
bot's fixed decline, not the model, and are counted apart (``no_passage``).

- ``seen`` / ``held_out``: opening questions from training (or held-out) phrasings on the shop's
  knowledge base as shipped. ``on_article``: the intent the reply names best (its key facts,
  values of its facts, its topic) is the one asked; ``all_facts``: every key fact, with the values
  of the article; ``wrong_facts``: a value contradicting the article (another value of the pool
  of a fact the answer uses); ``eos``: the reply ended within the budget.
- ``edited``: one fact of an article changed to a value no chat of the corpus has for it
  (``sim/northwind/evaluation.json``), asked about with the intent's phrasings: shares stating the
  new value and the old one.
- ``new_topic``: an article on a topic the corpus never covers (gift cards), with its questions:
  share of replies stating one of its facts.
- ``out_of_scope``: every out-of-scope question (seen and held-out) on the shop's knowledge base:
  share declined or referred (``sim.rubric.declines``; a question retrieval finds nothing for gets
  the bot's fixed decline, which does), and share with an invented promise.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from loopdesk.articles import ArticleDraft, VersionedArticle
from loopdesk.config import Settings
from loopdesk.knowledge import KnowledgeIndex, render_context
from sim.company import Company, Intent, load_company, states
from sim.corpus import Message
from sim.knowledge import (fact_values, load_evaluation, load_templates, out_of_scope_questions, render_article,
                           template_for)

SERVING_TEMPERATURE = next(f.default for f in fields(Settings) if f.name == "temperature")
REPLY_TOKENS = next(f.default for f in fields(Settings) if f.name == "max_reply_tokens")


@dataclass(frozen=True)
class GroundedResult:
    """Shares of sampled replies on the asked article, with all its key facts, with a wrong one, ending."""

    on_article: float
    all_facts: float
    wrong_facts: float
    eos: float
    no_passage: float
    n: int


@dataclass(frozen=True)
class EditResult:
    """Shares of replies to the edited article's questions stating its new value, and the old one."""

    new_value: float
    old_value: float
    no_passage: float
    n: int


@dataclass(frozen=True)
class NewTopicResult:
    """Shares of replies to the new article's questions stating one of its facts, and shown its passage."""

    states_fact: float
    its_passage: float
    no_passage: float
    n: int


@dataclass(frozen=True)
class DeclineResult:
    """Shares of replies to out-of-scope questions declining (or referring), inventing a promise, and of
    questions retrieval found no passage for (the bot's fixed decline)."""

    declined: float
    promises: float
    no_passage: float
    n: int


def mentions(intent: Intent, reply: str, values: Mapping[str, str] | None = None) -> int:
    """How strongly ``reply`` names ``intent``: key facts, other values of its facts, its topic."""
    facts = len(intent.key_facts) - len(intent.missing_facts(reply, values=values))
    return facts + len(intent.wrong_facts_in(reply, values=values)) + (intent.topic.lower() in reply.lower())


def reply_intent(company: Company, reply: str, values_of: Mapping[str, Mapping[str, str]] | None = None) -> str | None:
    """The intent a reply names most strongly (ties and replies naming none give None)."""
    scores = {i.name: mentions(i, reply, (values_of or {}).get(i.name)) for i in company.intents}
    best = max(scores.values())
    winners = [name for name, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def shop_articles(company: Company, edits: Mapping[str, Mapping[str, str]] | None = None,
                  extra: Sequence[ArticleDraft] = ()) -> list[VersionedArticle]:
    """The shop's articles as shipped, with ``edits`` (intent name -> facts) applied and ``extra`` added."""
    drafts = [render_article(t, company, (edits or {}).get(t.intent)) for t in load_templates()]
    return [VersionedArticle(**d.model_dump(), version=1) for d in [*drafts, *extra]]


def grounded_prompt(company: Company, index: KnowledgeIndex, question: str) -> tuple[list[Message], str] | None:
    """The bot's prompt for an opening ``question`` and the article of its passage (None: nothing retrieved)."""
    hits = index.search(question, k=1)
    if not hits:
        return None
    context = render_context(company.shop.system_prompt, index.passages(hits))
    return [{"role": "system", "content": context}, {"role": "user", "content": question}], hits[0].id


def dressed(company: Company, questions: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``n`` of ``questions``, each drawn at random and written as a persona drawn by weight writes it."""
    weights = [p.weight for p in company.personas]
    return [rng.choices(company.personas, weights)[0].phrase(rng.choice(questions), rng) for _ in range(n)]


def opening_chats(company: Company, per_intent: int, held_out: bool,
                  rng: random.Random) -> tuple[list[tuple[Intent, list[Message]]], int]:
    """``per_intent`` persona-dressed opening questions per intent from training (or held-out) phrasings,
    as the bot prompts them on the shop's knowledge base as shipped; those retrieval finds nothing for
    are left out. Returns the (intent, prompt) pairs and how many questions were asked."""
    index = KnowledgeIndex(shop_articles(company))
    chats, asked = [], 0
    for intent in company.intents:
        for question in dressed(company, intent.held_out if held_out else intent.phrasings, per_intent, rng):
            found = grounded_prompt(company, index, question)
            asked += 1
            if found is not None:
                chats.append((intent, found[0]))
    return chats, asked


class Prober:
    """Samples replies to grounded prompts from one model, batched, at the serving temperature."""

    def __init__(self, model: Any, tokenizer: Any, seed: int = 0, batch_size: int = 64):
        import torch

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.company, self.rng = load_company(), random.Random(seed)
        torch.manual_seed(seed)

    def replies(self, chats: list[list[Message]]) -> list[tuple[str, bool]]:
        from sim.bootstrap import sample_replies

        out = []
        for start in range(0, len(chats), self.batch_size):
            out += sample_replies(self.model, self.tokenizer, chats[start:start + self.batch_size],
                                  SERVING_TEMPERATURE, REPLY_TOKENS)
        return out

    def _ask(self, index: KnowledgeIndex, questions: list[str]) -> tuple[list[tuple[str, bool]], list[str], float]:
        prompts = [grounded_prompt(self.company, index, q) for q in questions]
        found = [p for p in prompts if p is not None]
        replies = self.replies([chat for chat, _ in found]) if found else []
        return replies, [article for _, article in found], 1 - len(found) / len(prompts)

    def grounded(self, per_intent: int, held_out: bool) -> GroundedResult:
        """Opening questions of every intent on the shop's knowledge base as shipped."""
        kept, asked = opening_chats(self.company, per_intent, held_out, self.rng)
        replies = self.replies([chat for _, chat in kept])
        n = max(1, len(replies))
        return GroundedResult(
            on_article=sum(reply_intent(self.company, text) == i.name for (i, _), (text, _) in zip(kept, replies)) / n,
            all_facts=sum(not i.missing_facts(text) for (i, _), (text, _) in zip(kept, replies)) / n,
            wrong_facts=sum(bool(i.wrong_facts_in(text)) for (i, _), (text, _) in zip(kept, replies)) / n,
            eos=sum(ended for _, ended in replies) / n,
            no_passage=1 - len(kept) / asked, n=len(replies))

    def edited(self, per_edit: int) -> EditResult:
        """Each evaluation edit on its own: the intent's questions against the edited article."""
        new = old = n = missing = asked = 0
        for edit in load_evaluation().edits:
            intent = self.company.intent(edit.intent)
            index = KnowledgeIndex(shop_articles(self.company, {intent.name: {edit.fact: edit.value}}))
            questions = dressed(self.company, intent.phrasings + intent.held_out, per_edit, self.rng)
            replies, _, no_passage = self._ask(index, questions)
            was = fact_values(template_for(intent.name), self.company)[edit.fact]
            new += sum(states(edit.value, text) for text, _ in replies)
            old += sum(states(was, text) for text, _ in replies)
            n, missing, asked = n + len(replies), missing + no_passage * per_edit, asked + per_edit
        return EditResult(new / max(1, n), old / max(1, n), missing / asked, n)

    def new_topic(self, per_question: int) -> NewTopicResult:
        """Questions on the evaluation-only articles, added to the shop's knowledge base."""
        articles = load_evaluation().articles
        extra = [render_article(a, self.company) for a in articles]
        index = KnowledgeIndex(shop_articles(self.company, extra=extra))
        stated = shown = n = 0
        for article in articles:
            values = fact_values(article, self.company).values()
            questions = [q for question in article.questions
                         for q in dressed(self.company, [question], per_question, self.rng)]
            replies, passages, _ = self._ask(index, questions)
            stated += sum(any(states(v, text) for v in values) for text, _ in replies)
            shown += sum(p == article.id for p in passages)
            n += len(replies)
        asked = sum(len(a.questions) for a in articles) * per_question
        return NewTopicResult(stated / max(1, n), shown / max(1, n), 1 - n / asked, n)


    def out_of_scope(self, repeats: int) -> DeclineResult:
        """Every out-of-scope question ``repeats`` times on the shop's knowledge base as shipped."""
        from sim.rubric import INVENTED_PROMISE, declines

        questions = [q for held_out in (False, True) for q in out_of_scope_questions(held_out)] * repeats
        replies, _, no_passage = self._ask(KnowledgeIndex(shop_articles(self.company)), questions)
        fixed = len(questions) - len(replies)  # the bot's own decline, which declines and invents nothing
        return DeclineResult((fixed + sum(declines(text) for text, _ in replies)) / len(questions),
                             sum(bool(INVENTED_PROMISE.search(text)) for text, _ in replies) / len(questions),
                             no_passage, len(questions))


def base_probe(model: Any, tokenizer: Any, per_intent: int = 8, seed: int = 0) -> dict[str, Any]:
    """Every probe of a base model: seen and held-out openings, the edited facts, the new topic, the
    out-of-scope questions."""
    prober = Prober(model, tokenizer, seed)
    return {"seen": prober.grounded(per_intent, False), "held_out": prober.grounded(per_intent, True),
            "edited": prober.edited(per_intent), "new_topic": prober.new_topic(max(1, per_intent // 2)),
            "out_of_scope": prober.out_of_scope(max(1, per_intent // 8))}


def as_dict(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Probe results rounded for a manifest or a report."""
    return {name: {k: round(v, 3) for k, v in asdict(r).items()} for name, r in results.items()}
