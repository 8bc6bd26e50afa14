"""The figure guard (bot.runtime.figure_guard): what a figure is, which tokens it bans inside and outside one
(worked by hand on the test model's tokenizer), and replies sampled under it on the real test-size model and
through the engine: no figure their prompt does not give, log-probs those of the distribution sampled."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.runtime import Engine
from bot.runtime.batching import Batch, Row, sample
from bot.runtime.figure_guard import OPEN_RUN, FigureGuard, FigureVocabulary, figures
from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.replay_helpers import replayed_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PASSAGE = "Once your return reaches our warehouse, we refund it within 8-12 business days. Express costs $9.95."
CONTACT = "0800 555 0199 (8am to 6pm, Monday to Friday)"


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return AutoTokenizer.from_pretrained(base_model_dir)


@pytest.fixture(scope="module")
def vocabulary(tokenizer) -> FigureVocabulary:
    return FigureVocabulary(tokenizer, len(tokenizer), tokenizer.eos_token_id)


def test_a_figure_is_digit_groups_with_single_separators_and_glued_letters_but_not_a_name() -> None:
    text = "Refunds take 8-12 business days, 2-year warranty, $9.95, 1,000 points, 10:30; call 0800 555 0199 " \
           "(8am to 6pm). Article (refunds v2), B2B, 3 to 5 days."
    assert figures(text) == {"8-12", "2", "9.95", "1,000", "10:30", "0800 555 0199", "8am", "6pm", "3", "5"}
    assert figures("no numbers here", "") == frozenset()


def walk(guard: FigureGuard, tokenizer, text: str) -> tuple[str, bool]:
    """Feed ``text``'s tokens through ``guard``: the text accepted before the first banned token (all of it
    when none is), and whether EOS may come next."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    for n, token in enumerate(ids):
        if token in set(guard.banned().tolist()):
            return tokenizer.decode(ids[:n]), False
        guard.advance(token)
    return text, tokenizer.eos_token_id not in set(guard.banned().tolist())


@pytest.mark.parametrize("prompt, reply, accepted, may_end", [
    ("", "We refund it within 8-12 business days.", "We refund it within 8-12 business days.", True),
    ("", "Express costs $9.95.", "Express costs $9.95.", True),
    ("", "Call 0800 555 0199 (8am to 6pm).", "Call 0800 555 0199 (8am to 6pm).", True),
    ("", "We refund it within 5-7 business days.", "We refund it within", False),  # a figure nobody gave
    ("", "It takes 30 days.", "It takes", False),
    ("", "Call 555 now.", "Call", False),  # a part of the phone number is not the phone number
    ("", "Within 8 business days.", "Within 8", False),  # 8 starts 8-12 and 8am, but alone it is neither
    ("", "We refund it within 8-1", "We refund it within 8-1", False),  # EOS waits for the figure to complete
    ("", "Our v7 model, B2B.", "Our v7 model, B2B.", True),  # digits in a name are no figure
    ("", "A 12-day wait.", "A", False),  # 12 is part of 8-12, not a figure of its own...
    ("Orders over 12 items", "A 12-day wait.", "A 12-day wait.", True),  # ...until a prompt says it
])
def test_hand_worked_replies_under_the_guard(vocabulary, tokenizer, prompt: str, reply: str, accepted: str,
                                             may_end: bool) -> None:
    got, ends = walk(vocabulary.guard(figures(PASSAGE, CONTACT, prompt)), tokenizer, reply)
    assert got.rstrip() == accepted.rstrip() and ends == may_end


def test_a_figure_not_in_the_prompt_is_banned_at_its_first_token_even_when_glued_to_a_letter(
        vocabulary, tokenizer) -> None:
    guard = vocabulary.guard(figures(PASSAGE))
    assert walk(guard, tokenizer, "within 8-12days")[0].rstrip() == "within 8-12"  # 8-12days is another figure
    guard = vocabulary.guard(figures("open 8am to 6pm"))
    assert walk(guard, tokenizer, "from 8am on")[1]
    assert walk(vocabulary.guard(figures("open 8am to 6pm")), tokenizer, "from 8 on")[0].rstrip() == "from 8"


def test_sampling_under_a_ban_gives_banned_tokens_no_probability_and_renormalises() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 12)
    banned = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    for _ in range(50):
        tokens, logprobs, ok = sample(logits, 0.7, [banned, None])
        assert int(tokens[0]) in (10, 11) and bool(ok.all())
        masked = logits[0].clone() / 0.7
        masked[banned] = -math.inf
        assert float(logprobs[0]) == pytest.approx(float(torch.log_softmax(masked, -1)[tokens[0]]), abs=1e-5)
        assert float(logprobs[1]) == pytest.approx(float(torch.log_softmax(logits[1] / 0.7, -1)[tokens[1]]), abs=1e-5)


def sampled(model, tokenizer, vocabulary: FigureVocabulary | None, n: int = 48, seed: int = 5) -> list[Row]:
    """``n`` replies of the test model to a refund question whose passage gives 8-12 business days, in one batch,
    at a hot temperature (figures of every kind come out); each row under a guard when ``vocabulary`` is given."""
    chat = [{"role": "system", "content": PASSAGE}, {"role": "user", "content": "how long does my refund take?"}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    rows = [Row(ids, 40, guard=vocabulary.guard(figures(text)) if vocabulary else None) for _ in range(n)]
    torch.manual_seed(seed)
    with torch.no_grad():
        batch = Batch.prefill(model, rows, tokenizer.pad_token_id, tokenizer.eos_token_id, 1.5)
        while not all(r.done for r in batch.rows):
            batch.step(model, tokenizer.eos_token_id, 1.5)
    return rows


def states_only(reply: str, finished: bool, allowed: set[str] | frozenset[str]) -> bool:
    """Whether ``reply`` states no figure but ``allowed``; one cut by its token budget may end inside one."""
    cut = OPEN_RUN.search(reply) if not finished else None
    return figures(reply[:cut.start()] if cut else reply) <= allowed and (
        cut is None or any(f.startswith(cut.group().rstrip()) for f in allowed))


def test_replies_sampled_under_the_guard_state_only_the_prompts_figures_with_their_logprobs(
        base_model_dir: Path, tokenizer, vocabulary) -> None:
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    unguarded = [tokenizer.decode(r.reply_ids, skip_special_tokens=True) for r in sampled(model, tokenizer, None)]
    assert any(figures(reply) - {"8-12", "9.95"} for reply in unguarded)  # the model does state others
    rows = sampled(model, tokenizer, vocabulary)
    replies = [tokenizer.decode(r.reply_ids, skip_special_tokens=True) for r in rows]
    for row, reply in zip(rows, replies):
        assert states_only(reply, row.finished, {"8-12", "9.95"}), reply
    assert any("8-12" in reply or "9.95" in reply for reply in replies)  # the passage's own figures come out
    for row in rows[:8]:
        guard = vocabulary.guard(row.guard.allowed)
        replay = replayed_logprobs(model, row.prompt_ids, row.reply_ids, 1.5, guard, row.max_new_tokens)
        assert row.logprobs == pytest.approx(replay, abs=1e-4)


def test_the_engine_guards_every_reply_with_the_shops_and_its_own_figures_not_the_customers(
        settings: Settings, store: FeedbackStore, base_model_dir: Path) -> None:
    engine = Engine(settings.replace(base_model=str(base_model_dir), max_reply_tokens=32, temperature=1.5), store)
    chat = [{"role": "user", "content": "When is the refund of order 4417 due?"},
            {"role": "assistant", "content": "Refunds take 8-12 business days."},
            {"role": "user", "content": "Confirm it is 30 days for order 4417 or 2 hours."}]
    engine.start()
    try:
        for _ in range(12):
            gen = engine.generate(chat, "base")
            assert "8-12" in gen.grounds and "4417" not in gen.grounds and "4417" in gen.context
            allowed = engine.figure_guard(gen.grounds).allowed
            assert {"8-12", "0800 555 0199", "8am", "6pm"} <= allowed and not {"4417", "30", "2"} & allowed
            assert states_only(gen.text, gen.finished, allowed), gen.text
    finally:
        engine.stop()
    off = Engine(settings.replace(base_model=str(base_model_dir), figure_guard=False), store)
    assert off.figure_guard("Refunds take 8-12 business days.") is None
