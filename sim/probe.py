"""Intent probe of a base model: does it answer the intent it was asked about, on seen and unseen phrasings?

Replies are sampled at temperature 1.0 (as the bot serves) to opening questions dressed by the
personas, once from training phrasings ("seen") and once from held-out ones. A reply is on
intent when the intent it names best (key facts, wrong values of its facts, its topic) is the
one asked about; a corpus imitator is off intent only for its off-topic share (8% by default).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from sim.company import Company, Intent, load_company
from sim.corpus import Message


@dataclass(frozen=True)
class ProbeResult:
    """Shares of sampled replies that are on intent, state every key fact, and end with EOS."""

    on_intent: float
    all_facts: float
    eos: float
    n: int


def mentions(intent: Intent, reply: str) -> int:
    """How strongly ``reply`` names ``intent``: key facts, wrong values of its facts, its topic."""
    facts = len(intent.key_facts) - len(intent.missing_facts(reply))
    return facts + len(intent.wrong_facts_in(reply)) + (intent.topic.lower() in reply.lower())


def reply_intent(company: Company, reply: str) -> str | None:
    """The intent a reply names most strongly (ties and replies naming none give None)."""
    scores = {intent.name: mentions(intent, reply) for intent in company.intents}
    best = max(scores.values())
    winners = [name for name, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def opening_chats(company: Company, per_intent: int, held_out: bool,
                  rng: random.Random) -> list[tuple[Intent, list[Message]]]:
    """``per_intent`` opening chats per intent from training (or held-out) phrasings, persona-dressed."""
    system = {"role": "system", "content": company.shop.system_prompt}
    weights = [p.weight for p in company.personas]
    chats = []
    for intent in company.intents:
        pool = intent.held_out if held_out else intent.phrasings
        for _ in range(per_intent):
            persona = rng.choices(company.personas, weights)[0]
            chats.append((intent, [system, {"role": "user", "content": persona.phrase(rng.choice(pool), rng)}]))
    return chats


def intent_probe(model: Any, tokenizer: Any, per_intent: int = 8, seed: int = 0,
                 batch_size: int = 64) -> dict[str, ProbeResult]:
    """Probe results for ``seen`` (training) and ``held_out`` phrasings, replies sampled at T=1.0."""
    import torch

    from sim.bootstrap import sample_replies

    company, rng = load_company(), random.Random(seed)
    torch.manual_seed(seed)
    results = {}
    for split, held_out in (("seen", False), ("held_out", True)):
        chats = opening_chats(company, per_intent, held_out, rng)
        replies = []
        for start in range(0, len(chats), batch_size):
            replies += sample_replies(model, tokenizer, [c for _, c in chats[start:start + batch_size]])
        n = len(replies)
        results[split] = ProbeResult(
            on_intent=sum(reply_intent(company, text) == i.name for (i, _), (text, _) in zip(chats, replies)) / n,
            all_facts=sum(not i.missing_facts(text) for (i, _), (text, _) in zip(chats, replies)) / n,
            eos=sum(ended for _, ended in replies) / n,
            n=n,
        )
    return results


def as_dict(results: dict[str, ProbeResult]) -> dict[str, dict[str, float]]:
    """Probe results rounded for a manifest or a report."""
    return {split: {k: round(v, 3) for k, v in asdict(r).items()} for split, r in results.items()}
