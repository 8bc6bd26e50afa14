"""The demo company's training corpus: chats with a deliberate mix of good and flawed replies.

The tiny base model learns from this corpus, so its mix sets how good the base bot is. Styles
(one per assistant turn, drawn to exact quotas of ``CorpusConfig.mix``):

- ``good``: correct facts, polite, concise (the canonical behaviour PPO should find);
- ``curt``: correct facts wrapped in a rude remark;
- ``vague``: polite-ish but states no facts;
- ``wrong_facts``: polite and concise, but with wrong numbers or deadlines;
- ``too_long``: correct facts buried in rambling filler, longer than the bot's reply budget;
- ``off_topic``: answers another intent or advertises products;
- ``over_apologetic``: correct facts drowned in apologies;
- ``flattering``: compliments the customer and says nothing (bait for reward hacking).

The default mix (28% good) makes the base policy mediocre. Held-out phrasings never appear.
A customer whose opening question went unanswered (styles in ``UNANSWERED``) asks it again,
as simulated customers do; the reply to that re-ask has a style of its own, drawn to the mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sim.company import Company, Intent, load_company

Message = dict[str, str]

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


@dataclass(frozen=True)
class CorpusConfig:
    """How many chats to make and in which reply-quality proportions.

    Parameters:
        n_dialogues (int, default 2400): number of chats.
        follow_up_share (float, default 0.5): share of chats with a second customer question.
        mix (dict[str, float], default DEFAULT_MIX): share of assistant turns per style; keys
            from ``STYLES``, values summing to 1.
        reask_share (float, default 1.0): share of chats with an unanswered opening (styles in
            ``UNANSWERED``) where the customer asks again before any follow-up.
        seed (int, default 0): seed of every random choice; the same config gives the same corpus.
    """

    n_dialogues: int = 2400
    follow_up_share: float = 0.5
    reask_share: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(STYLES)
        if unknown:
            raise ValueError(f"unknown reply styles {sorted(unknown)}; known: {list(STYLES)}")
        if any(v < 0 for v in self.mix.values()) or abs(sum(self.mix.values()) - 1) > 1e-6:
            raise ValueError(f"mix shares must be non-negative and sum to 1, got {self.mix}")
        if self.n_dialogues < 1 or not (0 <= self.follow_up_share <= 1 and 0 <= self.reask_share <= 1):
            raise ValueError("n_dialogues must be >= 1, follow_up_share and reask_share within [0, 1]")


@dataclass(frozen=True)
class Dialogue:
    """One generated chat and what it was made of: per customer turn, its kind and the reply's style.

    ``questions`` holds ``"opening"``, ``"reask"`` (the opening asked again) or ``"follow_up"``.
    """

    intent: str
    persona: str
    questions: tuple[str, ...]
    styles: tuple[str, ...]
    messages: list[Message]


def quotas(mix: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` turns across styles in proportion to ``mix`` (largest remainder)."""
    exact = {style: share * total for style, share in mix.items()}
    counts = {style: int(value) for style, value in exact.items()}
    by_remainder = sorted(exact, key=lambda s: (counts[s] - exact[s], s))
    for style in by_remainder[: total - sum(counts.values())]:
        counts[style] += 1
    return counts


def render_reply(company: Company, intent: Intent, style: str, follow_up: bool,
                 rng: random.Random) -> str:
    """One assistant reply of the given style to the intent's opening or follow-up question."""
    shop, styles = company.shop, company.styles
    template = rng.choice(intent.follow_up.answers if follow_up else intent.answers)
    answer = intent.fill(template)
    opener, closer = rng.choice(shop.good_openers), rng.choice(shop.good_closers)
    if style == "good":
        return f"{opener}{answer}{closer}"
    if style == "curt":
        return rng.choice(styles.curt).format(answer=answer)
    if style == "vague":
        return rng.choice(styles.vague).format(topic=intent.topic)
    if style == "wrong_facts":
        return f"{opener}{intent.fill(template, rng)}{closer}"
    if style == "too_long":
        filler = " ".join(rng.sample(styles.too_long_fillers, 3))
        return f"{opener}{answer} {filler}{closer}"
    if style == "off_topic":
        if rng.random() < 0.5:
            return rng.choice(styles.off_topic)
        other = rng.choice([i for i in company.intents if i.name != intent.name])
        return other.fill(rng.choice(other.answers))
    if style == "over_apologetic":
        return f"{rng.choice(styles.apology_openers)}{answer}{rng.choice(styles.apology_closers)}"
    if style == "flattering":
        vague = rng.choice(styles.vague).format(topic=intent.topic)
        return f"{rng.choice(styles.flattery_openers)}{vague}{rng.choice(styles.flattery_closers)}"
    raise ValueError(f"unknown reply style {style!r}; known: {list(STYLES)}")


def _drawn_styles(mix: dict[str, float], total: int, rng: random.Random) -> list[str]:
    """``total`` styles in exact quota proportions, shuffled."""
    styles = [style for style, n in quotas(mix, total).items() for _ in range(n)]
    rng.shuffle(styles)
    return styles


def generate_corpus(config: CorpusConfig = CorpusConfig(),
                    company: Company | None = None) -> list[Dialogue]:
    """Make the corpus: chats cycling through intents, personas drawn by weight, styles by quota.

    Opening and follow-up replies share one quota draw, re-ask replies another, so each part
    of the corpus follows the mix.
    """
    company = company or load_company()
    rng = random.Random(config.seed)
    n_follow = round(config.follow_up_share * config.n_dialogues)
    has_follow = [True] * n_follow + [False] * (config.n_dialogues - n_follow)
    rng.shuffle(has_follow)
    styles = iter(_drawn_styles(config.mix, config.n_dialogues + n_follow, rng))
    plans = []
    for follow in has_follow:
        opening = next(styles)
        reask = opening in UNANSWERED and rng.random() < config.reask_share
        plans.append((opening, reask, next(styles) if follow else None))
    reask_styles = iter(_drawn_styles(config.mix, sum(reask for _, reask, _ in plans), rng))
    weights = [p.weight for p in company.personas]
    dialogues = []
    for index, (opening, reask, follow_style) in enumerate(plans):
        intent = company.intents[index % len(company.intents)]
        persona = rng.choices(company.personas, weights)[0]
        turns = [("opening", persona.phrase(rng.choice(intent.phrasings), rng), opening)]
        if reask:
            again = rng.choice(company.styles.reask_openers) + rng.choice(intent.phrasings)
            turns.append(("reask", again, next(reask_styles)))
        if follow_style is not None:
            turns.append(("follow_up", persona.phrase(rng.choice(intent.follow_up.questions), rng), follow_style))
        messages = [{"role": "system", "content": company.shop.system_prompt}]
        for kind, question, style in turns:
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant",
                             "content": render_reply(company, intent, style, kind == "follow_up", rng)})
        dialogues.append(Dialogue(intent.name, persona.name, tuple(k for k, _, _ in turns),
                                  tuple(s for _, _, s in turns), messages))
    return dialogues
