"""Figures in replies: PPO rollouts that reward taking a reply's figures from its passage.

Two parts, and an option. ``unsupported_share``: the share of a reply's figures its context does not
state, which a round subtracts (× ``RoundConfig.figure_weight``) from the reward of every rollout: a
figure the reply states should be one the passage or the customer gave. ``swapped_references``:
copies of reviewed contexts with their figures changed, where that check and the reference reward
pay for reading the passage rather than recalling the shipped value.

Every context an expert reviewed holds the help article's passage, and its reference reply (the
expert's correction or approved reply, ``trainer.references``) states the passage's figures: "within
14 days", "3-5 business days". Trained only on those, a policy is rewarded as much for recalling
"14" as for reading it, and after a few rounds it states the shipped value even once an operator
has edited the article. ``swapped_references`` adds, for a share of the reviewed contexts, a copy
in which every figure the context and its reference share is scaled by one random factor (0.5 to
2.0, so a range stays a range and a price keeps its cents), alike in both: the passage then says
"within 23 days", the reference does too, and the reference reward (word F1) pays for "23" and
costs for "14". Nothing here knows the shop: a figure is a number (digits, with decimals), and only
those the reference repeats from the context change.

``swapped_demonstrations`` (``RoundConfig.figure_swap_demonstrations``, off by default) does the same
to the demonstrations the warm start and PPO-ptx imitate: prompt and reply scaled alike, so that
imitating them is copying the passage's figure.

A copy is kept only when its text encodes back to the same text (the tokenizer round-trips it) and
is at most ``MAX_EXTRA_TOKENS`` longer than the original, so it fits where the original fitted.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

FIGURE = re.compile(r"(?<![0-9.A-Za-z])[0-9]+(?:\.[0-9]+)?(?![0-9])")
MAX_EXTRA_TOKENS = 2
FACTORS = (0.5, 2.0)  # the range of the factor a context's figures are scaled by


def scaled(figure: str, factor: float) -> str:
    """``figure`` times ``factor``, with as many decimals as it had; never the same value, never below
    its smallest unit."""
    decimals = len(figure.partition(".")[2])
    unit = 10.0 ** -decimals
    value = float(figure)
    new = max(unit, round(value * factor, decimals))
    if abs(new - value) < unit / 2:
        new = value + unit
    return f"{new:.{decimals}f}"


def unsupported_share(context: str, reply: str) -> float:
    """The share of the reply's figures (other than 0) that the context does not state; 0 for a reply
    without figures."""
    stated = [f for f in FIGURE.findall(reply) if float(f) > 0]
    if not stated:
        return 0.0
    given = set(FIGURE.findall(context))
    return sum(f not in given for f in stated) / len(stated)


def figure_penalties(pairs: list[tuple[list[int], list[int]]], tokenizer: Any) -> list[float]:
    """``unsupported_share`` of each (prompt ids, reply ids) pair, decoded without special tokens."""
    return [unsupported_share(tokenizer.decode(list(prompt), skip_special_tokens=True),
                              tokenizer.decode(list(reply), skip_special_tokens=True)) for prompt, reply in pairs]


def swap_figures(text: str, mapping: dict[str, str]) -> str:
    """``text`` with every figure in ``mapping`` replaced by its new value, all at once."""
    return FIGURE.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


def shared_figures(context: str, references: list[str]) -> list[str]:
    """The figures (other than 0) that the context states and at least one reference repeats, smallest first."""
    in_context = set(FIGURE.findall(context))
    repeated = {f for text in references for f in FIGURE.findall(text)} & in_context
    return sorted((f for f in repeated if float(f) > 0), key=float)


def swap_context(prompt: str, texts: list[str], rng: random.Random, tokenizer: Any, length: int
                 ) -> tuple[tuple[int, ...], dict[str, str]] | None:
    """``prompt`` (decoded, ``length`` tokens) with every figure it shares with ``texts`` scaled by one random
    factor: its token ids and the figures' mapping; None when it has none, or the copy does not round-trip
    through the tokenizer or grows by more than ``MAX_EXTRA_TOKENS``."""
    figures = shared_figures(prompt, texts)
    if not figures:
        return None
    factor = rng.uniform(*FACTORS)
    mapping = {f: scaled(f, factor) for f in figures}
    new_prompt = swap_figures(prompt, mapping)
    ids = tuple(tokenizer(new_prompt, add_special_tokens=False)["input_ids"])
    if tokenizer.decode(list(ids), skip_special_tokens=False) != new_prompt or len(ids) > length + MAX_EXTRA_TOKENS:
        return None
    return ids, mapping


def swapped_references(references: dict[tuple[int, ...], list[str]], tokenizer: Any, share: float,
                       seed: int) -> dict[tuple[int, ...], list[str]]:
    """Figure-swapped copies of ``share`` of the ``references``' contexts (those with a figure to swap),
    as new contexts (prompt token ids) with their references changed alike."""
    if share <= 0:
        return {}
    rng = random.Random(seed)
    swapped: dict[tuple[int, ...], list[str]] = {}
    for context in sorted(references):
        texts = references[context]
        prompt = tokenizer.decode(list(context), skip_special_tokens=False)
        if not shared_figures(prompt, texts) or rng.random() >= share:
            continue
        copy = swap_context(prompt, texts, rng, tokenizer, len(context))
        if copy is None or copy[0] in references:
            continue
        ids, mapping = copy
        swapped[ids] = sorted({swap_figures(t, mapping) for t in texts})
    return swapped


def swapped_demonstrations(examples: list[Any], tokenizer: Any, share: float, seed: int) -> list[Any]:
    """Figure-swapped copies of ``share`` of the demonstrations (``trainer.baselines.Example``: the
    corrections, agents' replies and well-rated replies SFT and PPO-ptx imitate) whose reply repeats a
    figure of its prompt: prompt and reply scaled alike, so that imitating them is copying the passage's
    figure, not the shipped one."""
    if share <= 0:
        return []
    rng = random.Random(seed)
    copies = []
    for example in examples:
        prompt = tokenizer.decode(example.prompt, skip_special_tokens=False)
        reply = tokenizer.decode(example.reply, skip_special_tokens=False)
        if not shared_figures(prompt, [reply]) or rng.random() >= share:
            continue
        copy = swap_context(prompt, [reply], rng, tokenizer, len(example.prompt))
        if copy is None:
            continue
        ids, mapping = copy
        new_reply = swap_figures(reply, mapping)
        reply_ids = tokenizer(new_reply, add_special_tokens=False)["input_ids"]
        if tokenizer.decode(reply_ids, skip_special_tokens=False) != new_reply:
            continue
        copies.append(dataclasses.replace(example, prompt=list(ids), reply=list(reply_ids)))
    return copies
