"""The generation engine on the real test-size model: batching, log-probs, streaming, prompts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bot.runtime import Engine, Generation
from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.replay_helpers import replayed_logprobs


@pytest.fixture
def engine(settings: Settings, store: FeedbackStore, base_model_dir: Path) -> Engine:
    engine = Engine(settings.replace(base_model=str(base_model_dir), max_reply_tokens=24), store)
    engine.start()
    yield engine
    engine.stop()


def replay_logprobs(model: torch.nn.Module, gen: Generation, engine: Engine) -> list[float]:
    """Log-probs of the reply tokens from one unbatched forward pass over prompt + reply, under the engine's
    figure guard."""
    return replayed_logprobs(model, gen.prompt_token_ids, gen.reply_token_ids, engine.settings.temperature,
                             engine.figure_guard(gen.grounds), engine.settings.max_reply_tokens)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_logprobs_align_with_reply_tokens_and_are_nonpositive(engine: Engine) -> None:
    gen = engine.generate(ask("Where is my order?"), "base")
    assert gen.reply_token_ids and len(gen.logprobs) == len(gen.reply_token_ids)
    assert all(lp <= 0 for lp in gen.logprobs)
    assert gen.finished == (gen.reply_token_ids[-1] == engine.tokenizer.eos_token_id)
    assert len(gen.reply_token_ids) <= 24
    assert gen.context.endswith("<|assistant|>") and "Where is my order?" in gen.context
    assert engine.tokenizer(gen.context, add_special_tokens=False).input_ids == gen.prompt_token_ids
    assert 0 < gen.ttft_ms <= gen.latency_ms


def test_batched_replies_have_the_single_request_distribution(engine: Engine, base_model_dir: Path) -> None:
    """Concurrent requests of different lengths, batched and merged mid-flight, score as if alone."""
    results: list[Generation] = []

    def client(i: int) -> None:
        results.append(engine.generate(ask("I want to return my tent. " * (i % 3 + 1)), "base"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    single = engine.generate(ask("I want to return my tent."), "base")
    assert len(results) == 8
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    for gen in [*results, single]:
        replay = replay_logprobs(model, gen, engine)
        assert gen.logprobs == pytest.approx(replay, abs=1e-4)


def test_streamed_text_adds_up_to_the_reply(engine: Engine) -> None:
    pieces: list[str] = []
    gen = engine.generate(ask("How do I reset my password?"), "base", on_text=pieces.append)
    assert "".join(pieces) == gen.text
    assert all(pieces)


def test_unloaded_version_is_served_by_the_active_one(engine: Engine) -> None:
    assert engine.choose_version() == "base"
    gen = engine.generate(ask("Hi"), "v0042")
    assert gen.adapter_version == "base"
    assert engine.loaded_versions() == ["base"]


def test_long_conversation_is_cut_to_the_context_window(engine: Engine, base_model_dir: Path) -> None:
    chat = []
    for i in range(30):
        chat += [{"role": "user", "content": f"question {i} about my order"},
                 {"role": "assistant", "content": f"answer {i}, thank you for waiting"}]
    chat.append({"role": "user", "content": "the latest question"})
    gen = engine.generate(chat, "base")
    positions = AutoConfig.from_pretrained(base_model_dir).max_position_embeddings
    assert len(gen.prompt_token_ids) + engine.settings.max_reply_tokens <= positions
    assert "the latest question" in gen.context and "question 0 " not in gen.context
    huge = engine.generate(ask("x" * 5000 + " END"), "base")
    assert huge.context.endswith("END<|assistant|>")
    assert len(huge.prompt_token_ids) + engine.settings.max_reply_tokens <= positions
