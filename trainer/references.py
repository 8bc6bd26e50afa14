"""The expert-reference reward: how closely a reply matches what an expert said the reply should be.

An expert who annotates a bot turn either corrects it (``corrected_reply``) or, by giving it the top
score (+2) without a correction, approves the reply as it stands. Either way the turn's exact context
(its prompt token ids) gets a reference reply. ``ExpertReferences.score`` rates a reply to such a
context by its word-level F1 against the closest reference, mapped to [-1, 1]; a context no expert
reviewed scores ``None``.

Why word F1: precision falls with every word the reference lacks (filler, apologies, compliments,
an answer to another question), recall with every word of the reference left out (the facts). Figures,
prices and addresses are words, so a wrong deadline costs on both sides. The reward model learns the
same expert view from pairs; this reads it directly, with no model to generalise wrongly, but only on
the contexts the experts saw.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from feedback_store.records import TurnWithFeedback

WORD = re.compile(r"[a-z0-9$%]+(?:[./-][a-z0-9$%]+)*")
TOP_SCORE = 2  # the annotation scale's best mark: the reply needs no correction


def words(text: str) -> Counter[str]:
    """The reply's words, lower-cased; a URL, price or range stays one word."""
    return Counter(WORD.findall(text.lower()))


def word_f1(reply: Counter[str], reference: Counter[str]) -> float:
    """Harmonic mean of word precision and recall of ``reply`` against ``reference`` (0 with no overlap)."""
    common = sum((reply & reference).values())
    return 0.0 if common == 0 else 2 * common / (sum(reply.values()) + sum(reference.values()))


def reference_texts(feedback: TurnWithFeedback) -> list[str]:
    """A turn's references: every non-empty correction, and the reply itself if an expert gave it the
    top score without correcting it."""
    texts = {a.corrected_reply.strip() for a in feedback.annotations} - {""}
    top_without_correction = any(a.score == TOP_SCORE and not a.corrected_reply.strip() for a in feedback.annotations)
    if top_without_correction and feedback.turn.text.strip():
        texts.add(feedback.turn.text.strip())
    return sorted(texts)


def reference_map(turns: Sequence[TurnWithFeedback]) -> dict[tuple[int, ...], list[str]]:
    """Reference texts by context (prompt token ids) of every annotated turn with a prompt; several turns
    of one context pool theirs."""
    pooled: dict[tuple[int, ...], set[str]] = {}
    for feedback in turns:
        texts = reference_texts(feedback)
        if texts and feedback.turn.prompt_token_ids:
            pooled.setdefault(tuple(feedback.turn.prompt_token_ids), set()).update(texts)
    return {context: sorted(texts) for context, texts in pooled.items()}


class ExpertReferences:
    """Reference replies by exact context (prompt token ids), from expert annotations."""

    def __init__(self, tokenizer, references: dict[tuple[int, ...], list[str]]) -> None:
        self.tokenizer = tokenizer
        self._words = {context: [words(t) for t in texts] for context, texts in references.items() if texts}

    @classmethod
    def from_turns(cls, turns: Sequence[TurnWithFeedback], tokenizer) -> "ExpertReferences":
        """References of every annotated turn with a prompt; several turns of one context pool theirs."""
        return cls(tokenizer, reference_map(turns))

    def __len__(self) -> int:
        return len(self._words)

    def contexts(self) -> list[list[int]]:
        """The contexts that have a reference, in a stable order."""
        return [list(c) for c in sorted(self._words)]

    def has(self, prompt_ids: Sequence[int]) -> bool:
        return tuple(prompt_ids) in self._words

    def score(self, prompt_ids: Sequence[int], reply_ids: Sequence[int]) -> float | None:
        """2·F1 − 1 in [-1, 1] of the reply against its context's closest reference; None without one."""
        refs = self._words.get(tuple(prompt_ids))
        if refs is None:
            return None
        reply = words(self.tokenizer.decode(list(reply_ids), skip_special_tokens=True))
        return 2 * max(word_f1(reply, ref) for ref in refs) - 1


def with_references(scores: Sequence[float], pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                    references: ExpertReferences | None, weight: float) -> tuple[list[float], list[float | None]]:
    """Reward-model ``scores`` of (prompt ids, reply ids) ``pairs`` plus ``weight`` × the expert-reference
    score where the context has one; also returns those reference scores (None where it has none),
    whatever the weight."""
    refs = [references.score(p, r) if references is not None else None for p, r in pairs]
    return [s + weight * ref if ref is not None else s for s, ref in zip(scores, refs, strict=True)], refs
