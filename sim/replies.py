"""Reply styles of the demo corpus: one assistant reply, good or deliberately flawed.

Styles (one per assistant turn, drawn to exact quotas of ``CorpusConfig.mix``):

- ``good``: the facts of the chat's help article, polite, concise (the behaviour PPO should find):
  half the time in the passage's own sentences, else in the intent's answer templates;
- ``curt``: those facts wrapped in a rude remark;
- ``vague``: polite-ish but states no facts;
- ``wrong_facts``: polite and concise, but with values that contradict the article;
- ``too_long``: the facts buried in rambling filler, longer than the bot's reply budget;
- ``off_topic``: answers another article's question or advertises products;
- ``over_apologetic``: the facts drowned in apologies;
- ``flattering``: compliments the customer and says nothing (bait for reward hacking).

When the passage in the context does not answer the question (an out-of-scope question, or
retrieval that found the wrong article or paragraph), the same styles apply to the shop's
honest decline: ``good`` declines and gives the contact address, ``wrong_facts`` invents a
promise (an action nobody takes), ``off_topic`` answers the passage's own question instead.
"""

from __future__ import annotations

import random
import re
from typing import Mapping

from sim.company import Company, Intent, states, value_pattern

DEFAULT_MIX: dict[str, float] = {
    "good": 0.28,
    "curt": 0.12,
    "vague": 0.12,
    "wrong_facts": 0.14,
    "too_long": 0.10,
    "off_topic": 0.08,
    "over_apologetic": 0.10,
    "flattering": 0.06,
}
STYLES = tuple(DEFAULT_MIX)
UNANSWERED = ("vague", "wrong_facts", "off_topic", "flattering")
DECLINE_TOPIC = "that"
QUOTE_SHARE = 0.5
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

Values = Mapping[str, str]


def _framed(company: Company, style: str, answer: str, topic: str, rng: random.Random) -> str | None:
    """The styles that only wrap an answer (or say nothing); None for the others."""
    shop, styles = company.shop, company.styles
    if style == "good":
        return f"{rng.choice(shop.good_openers)}{answer}{rng.choice(shop.good_closers)}"
    if style == "curt":
        return rng.choice(styles.curt).format(answer=answer)
    if style == "vague":
        return rng.choice(styles.vague).format(topic=topic)
    if style == "too_long":
        filler = " ".join(rng.sample(styles.too_long_fillers, 3))
        return f"{rng.choice(shop.good_openers)}{answer} {filler}{rng.choice(shop.good_closers)}"
    if style == "over_apologetic":
        return f"{rng.choice(styles.apology_openers)}{answer}{rng.choice(styles.apology_closers)}"
    if style == "flattering":
        vague = rng.choice(styles.vague).format(topic=topic)
        return f"{rng.choice(styles.flattery_openers)}{vague}{rng.choice(styles.flattery_closers)}"
    if style not in STYLES:
        raise ValueError(f"unknown reply style {style!r}; known: {list(STYLES)}")
    return None


def _another_article(company: Company, rng: random.Random, values_of: Mapping[str, Values] | None,
                     not_this: str | None) -> str:
    other = rng.choice([i for i in company.intents if i.name != not_this])
    return other.fill(rng.choice(other.answers), values=(values_of or {}).get(other.name))


def quoted_answer(intent: Intent, follow_up: bool, passage: str, values: Values) -> str | None:
    """The passage's own sentences that state the facts the answer needs, in order (None when they are
    not all there): the good reply that quotes its context."""
    needed = [values[name] for name in sorted(intent.used_facts(follow_up))]
    sentences = [s for s in _SENTENCE_END.split(passage) if any(states(v, s) for v in needed)]
    if not sentences or not all(any(states(v, s) for s in sentences) for v in needed):
        return None
    return " ".join(s.strip() for s in sentences)


def _contradicted(text: str, intent: Intent, follow_up: bool, values: Values, rng: random.Random) -> str:
    """``text`` with the value of every fact the answer uses replaced by another value of that fact's pool."""
    other = intent.other(rng, values)
    for name in sorted(intent.used_facts(follow_up), key=lambda n: -len(values[n])):
        text = re.sub(value_pattern(values[name]), lambda _: other[name], text)
    return text


def render_reply(company: Company, intent: Intent, style: str, follow_up: bool, rng: random.Random,
                 values: Values | None = None, values_of: Mapping[str, Values] | None = None,
                 passage: str | None = None) -> str:
    """One reply of ``style`` to the intent's opening (or follow-up) question, stating the facts as
    ``values`` (the chat's article; default canonical) has them; ``values_of`` gives other intents'
    values for off-topic answers. Given the ``passage`` shown, half the answers quote its sentences
    that state the facts (``QUOTE_SHARE``), the others are the intent's own answer templates."""
    current = {**intent.facts, **(values or {})}
    template = rng.choice(intent.follow_up.answers if follow_up else intent.answers)
    quoted = quoted_answer(intent, follow_up, passage, current) if passage else None
    answer = quoted if quoted and rng.random() < QUOTE_SHARE else intent.fill(template, values=current)
    framed = _framed(company, style, answer, intent.topic, rng)
    if framed is not None:
        return framed
    opener, closer = rng.choice(company.shop.good_openers), rng.choice(company.shop.good_closers)
    if style == "wrong_facts":
        return f"{opener}{_contradicted(answer, intent, follow_up, current, rng)}{closer}"
    if rng.random() < 0.5:  # off_topic
        return rng.choice(company.styles.off_topic)
    return _another_article(company, rng, values_of, intent.name)


def render_decline(company: Company, style: str, rng: random.Random, passage_intent: Intent | None = None,
                   values_of: Mapping[str, Values] | None = None) -> str:
    """One reply of ``style`` to a question the passage in context does not answer (``passage_intent``:
    the intent whose article the passage belongs to, if any)."""
    decline = company.shop.decline(rng.randrange(len(company.shop.declines)))
    framed = _framed(company, style, decline, DECLINE_TOPIC, rng)
    if framed is not None:
        return framed
    if style == "wrong_facts":
        return rng.choice(company.styles.invented_promises)
    if passage_intent is not None and rng.random() < 0.5:  # off_topic: answers what the passage is about
        return passage_intent.fill(rng.choice(passage_intent.answers),
                                   values=(values_of or {}).get(passage_intent.name))
    return rng.choice(company.styles.off_topic)
