"""Turning a conversation into the exact prompt the model sees, cut to fit its context window."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopdesk.base_models import MANIFEST as BASE_MANIFEST


@dataclass(frozen=True)
class Prompt:
    """The rendered prompt text and its token ids (no special tokens added beyond the template's)."""

    text: str
    token_ids: list[int]


def system_prompt(model_dir: str | Path) -> str | None:
    """The ``system_prompt`` of a base model's manifest, if it has one: the tiny model's (the prompt it was
    trained with) or a converted pretrained model's (``loopdesk bootstrap --system-prompt``, by default the
    demo shop's); a model directory without a manifest gets none."""
    manifest = Path(model_dir) / BASE_MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("system_prompt") or None


class PromptBuilder:
    """Renders chats with the tokenizer's chat template, dropping the oldest turns to fit ``budget`` tokens."""

    def __init__(self, tokenizer: Any, budget: int, system: str | None = None):
        self.tokenizer = tokenizer
        self.budget = budget
        self.system = system

    def build(self, messages: list[dict[str, str]]) -> Prompt:
        """The prompt for the next assistant reply to ``messages`` (oldest turns cut first).

        When even the last message alone is too long, the system prompt goes, then the start of
        that message's text.
        """
        if not messages:
            raise ValueError("a prompt needs at least one message")
        head = [{"role": "system", "content": self.system}] if self.system else []
        for start in range(len(messages)):
            prompt = self._render(head + messages[start:])
            if len(prompt.token_ids) <= self.budget:
                return prompt
        last = messages[-1]

        def cut(chars: int) -> Prompt:
            return self._render([{**last, "content": last["content"][chars:]}])

        lo, hi = 0, len(last["content"])
        while lo < hi:  # smallest cut of the message's start that fits
            mid = (lo + hi) // 2
            if len(cut(mid).token_ids) <= self.budget:
                hi = mid
            else:
                lo = mid + 1
        return cut(lo)

    def _render(self, messages: list[dict[str, str]]) -> Prompt:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return Prompt(text, self.tokenizer(text, add_special_tokens=False).input_ids)
