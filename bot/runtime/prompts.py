"""Turning a conversation and the help articles retrieved for it into the exact prompt the model
sees, cut to fit its context window."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from loopdesk.base_models import MANIFEST as BASE_MANIFEST
from loopdesk.config import Settings
from loopdesk.knowledge import PASSAGE_CHARS, PassageLike, render_context

MIN_PASSAGE_CHARS = 120
"""The shortest a passage is cut to (about its first sentence) before the customer's message is."""


@dataclass(frozen=True)
class Prompt:
    """The rendered prompt text and its token ids (no special tokens added beyond the template's), and
    ``grounds``: the text of its messages that are not the customer's (the system message with the help
    articles, the bot's earlier turns), where the figure guard takes the figures a reply may state from."""

    text: str
    token_ids: list[int]
    grounds: str = ""


def system_prompt(model_dir: str | Path) -> str | None:
    """The ``system_prompt`` of a base model's manifest, if it has one: the tiny model's (the prompt it was
    trained with) or a converted pretrained model's (``loopdesk bootstrap --system-prompt``, by default the
    demo shop's); a model directory without a manifest gets none."""
    manifest = Path(model_dir) / BASE_MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("system_prompt") or None


def prompt_builder(tokenizer: Any, max_positions: int, settings: Settings) -> "PromptBuilder":
    """The builder both engines use: the model's window less the longest reply, the system prompt of
    the base model's manifest, passages of ``kb_passage_chars``.

    Raises:
        ValueError: ``max_reply_tokens`` leaves no room for a prompt.
    """
    budget = max_positions - settings.max_reply_tokens
    if budget < 16:
        raise ValueError(f"max_reply_tokens={settings.max_reply_tokens} leaves no room for a prompt "
                         f"in {max_positions} positions")
    ref = settings.base_model_ref
    return PromptBuilder(tokenizer, budget, system_prompt(ref) if Path(ref).is_dir() else None,
                         settings.kb_passage_chars)


class PromptBuilder:
    """Renders chats with the tokenizer's chat template, cut to fit ``budget`` tokens.

    The system message is the shop's ``system`` prompt followed by the retrieved help articles
    (``loopdesk.knowledge.render_context``, each passage at most ``passage_chars`` characters).
    """

    def __init__(self, tokenizer: Any, budget: int, system: str | None = None, passage_chars: int = PASSAGE_CHARS):
        self.tokenizer = tokenizer
        self.budget = budget
        self.system = system
        self.passage_chars = passage_chars

    def build(self, messages: list[dict[str, str]], passages: Sequence[PassageLike] | None = None) -> Prompt:
        """The prompt for the next assistant reply to ``messages`` with ``passages`` in the system message.

        ``passages=None`` (no retrieval: adapter probes) puts only the system prompt there; a list,
        even an empty one, renders the knowledge lines. To fit, the oldest turns go first, then
        each passage is shortened (to ``MIN_PASSAGE_CHARS`` at the least, never dropped), then the
        start of the last message's text. Without retrieval (``None``) the system prompt goes
        before that cut.

        Raises:
            ValueError: no messages, or the system message with the shortest passages leaves no
                room for the last message.
        """
        if not messages:
            raise ValueError("a prompt needs at least one message")
        full, least = self.passage_chars, min(MIN_PASSAGE_CHARS, self.passage_chars)
        for start in range(len(messages)):
            prompt = self._render(self._head(passages, full) + messages[start:])
            if len(prompt.token_ids) <= self.budget:
                return prompt
        last = messages[-1]
        head: list[dict[str, str]] = []
        if passages is not None:
            chars = self._largest(least, full, lambda c: self._render(self._head(passages, c) + [last])) \
                if passages else None
            if chars is not None:
                return self._render(self._head(passages, chars) + [last])
            head = self._head(passages, least)

        def cut(chars: int) -> Prompt:
            return self._render(head + [{**last, "content": last["content"][chars:]}])

        lo, hi = 0, len(last["content"])
        while lo < hi:  # smallest cut of the message's start that fits
            mid = (lo + hi) // 2
            if len(cut(mid).token_ids) <= self.budget:
                hi = mid
            else:
                lo = mid + 1
        prompt = cut(lo)
        if len(prompt.token_ids) > self.budget:
            raise ValueError(f"the system prompt with the help articles cut to {MIN_PASSAGE_CHARS} characters "
                             f"takes more than the prompt budget of {self.budget} tokens")
        return prompt

    def _head(self, passages: Sequence[PassageLike] | None, chars: int) -> list[dict[str, str]]:
        if passages is None:
            return [{"role": "system", "content": self.system}] if self.system else []
        return [{"role": "system", "content": render_context(self.system or "", passages, chars)}]

    def _largest(self, lo: int, hi: int, render: Callable[[int], Prompt]) -> int | None:
        """The largest passage length in ``[lo, hi]`` whose prompt fits, or None when even ``lo`` does not."""
        if len(render(lo).token_ids) > self.budget:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(render(mid).token_ids) <= self.budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _render(self, messages: list[dict[str, str]]) -> Prompt:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        grounds = "\n".join(m["content"] for m in messages if m["role"] != "user")
        return Prompt(text, self.tokenizer(text, add_special_tokens=False).input_ids, grounds)
