"""The retrieved help articles in the prompt (the test-size model's tokenizer): after the system
prompt, and kept through the context cut: the oldest turns go first, then the passage is
shortened (never dropped), then the start of the customer's message."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bot.runtime.prompts import MIN_PASSAGE_CHARS, PromptBuilder, prompt_builder
from loopdesk.articles import VersionedArticle
from loopdesk.config import Settings
from loopdesk.knowledge import NO_ARTICLE, plain_text, render_context

SYSTEM = "You are the support assistant of the shop."
BODY = ("Refunds go back to the card you paid with within 5 business days of your return reaching us. "
        "We email you when the money is on its way. " * 6).strip()
REFUNDS = VersionedArticle(id="refunds", title="Refunds", body=BODY, version=3)


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return AutoTokenizer.from_pretrained(base_model_dir)


def builder(tokenizer, budget: int, passage_chars: int = 400) -> PromptBuilder:
    return PromptBuilder(tokenizer, budget, SYSTEM, passage_chars)


def system_line(prompt_text: str) -> str:
    """The knowledge line of the system message (the test template: <|system|>…<|user|>)."""
    system = prompt_text.split("<|system|>", 1)[1].split("<|user|>", 1)[0]
    return system.split("\n", 1)[1]


def passage_of(prompt_text: str) -> str:
    return system_line(prompt_text).split("): ", 1)[1]


def chat(turns: int, last: str = "How long does a refund take?") -> list[dict[str, str]]:
    messages = []
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i} about my order and my parcel"},
                     {"role": "assistant", "content": f"answer {i}, thank you for waiting so patiently"}]
    return messages + [{"role": "user", "content": last}]


def test_the_passage_follows_the_system_prompt_as_render_context_writes_it(tokenizer):
    prompt = builder(tokenizer, 1000).build(chat(0), [REFUNDS])
    expected = render_context(SYSTEM, [REFUNDS], 400)
    assert prompt.text.startswith(f"<|bos|><|system|>{expected}<|user|>")
    assert prompt.token_ids == tokenizer(prompt.text, add_special_tokens=False).input_ids


def test_the_oldest_turns_go_before_the_passage_is_shortened(tokenizer):
    full = builder(tokenizer, 10_000).build(chat(12), [REFUNDS])
    budget = len(full.token_ids) - 40
    prompt = builder(tokenizer, budget).build(chat(12), [REFUNDS])
    assert len(prompt.token_ids) <= budget
    assert "question 0 " not in prompt.text and "How long does a refund take?" in prompt.text
    assert passage_of(prompt.text) == passage_of(full.text)  # still the whole passage


def test_then_the_passage_is_shortened_but_never_dropped(tokenizer):
    alone = builder(tokenizer, 10_000).build(chat(0), [REFUNDS])
    budget = len(alone.token_ids) - 30
    prompt = builder(tokenizer, budget).build(chat(5), [REFUNDS])
    assert len(prompt.token_ids) <= budget
    passage = passage_of(prompt.text)
    assert system_line(prompt.text).startswith('Help article "Refunds" (refunds v3): ')
    assert MIN_PASSAGE_CHARS // 2 < len(passage) < len(passage_of(alone.text))
    assert passage.endswith((".", "…"))  # cut at a sentence end, or at a word when no sentence ends in reach
    assert plain_text(BODY).startswith(passage.removesuffix("…").rstrip())
    assert prompt.text.endswith("How long does a refund take?<|assistant|>")  # the message is whole
    assert "question 4 " not in prompt.text


def test_last_the_start_of_a_huge_message_is_cut_with_the_shortest_passage_kept(tokenizer):
    prompt = builder(tokenizer, 120).build(chat(0, "x" * 5000 + " END"), [REFUNDS])
    assert len(prompt.token_ids) <= 120
    assert prompt.text.endswith(" END<|assistant|>") and "x" * 5000 not in prompt.text
    assert system_line(prompt.text).startswith('Help article "Refunds" (refunds v3): ')
    assert len(passage_of(prompt.text)) <= MIN_PASSAGE_CHARS


def test_no_passage_says_so_and_no_retrieval_adds_nothing(tokenizer):
    assert system_line(builder(tokenizer, 1000).build(chat(0), []).text) == NO_ARTICLE
    bare = builder(tokenizer, 1000).build(chat(0), None).text
    assert bare.startswith(f"<|bos|><|system|>{SYSTEM}<|user|>")


def test_both_engines_build_with_the_settings_passage_length(tokenizer, base_model_dir):
    settings = Settings(base_model=str(base_model_dir), kb_passage_chars=150, max_reply_tokens=64)
    built = prompt_builder(tokenizer, 320, settings)
    assert (built.budget, built.passage_chars) == (256, 150) and built.system
    assert len(passage_of(built.build(chat(0), [REFUNDS]).text)) <= 150
    with pytest.raises(ValueError, match="no room for a prompt"):
        prompt_builder(tokenizer, 320, settings.replace(max_reply_tokens=310))
