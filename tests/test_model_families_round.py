"""A whole training round on other architectures than the tiny Llama (``tests/model_families``): the bot
serves and logs real replies, customers rate them, experts correct some; ``run_round`` trains the reward
model, runs PPO, gates and releases; the serving bot then hot-swaps the released adapter and serves its
replies with its log-probs."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from bot.runtime import Engine
from feedback_store import FeedbackStore
from feedback_store.records import BotTurn
from tests.adapter_helpers import wait_for
from tests.replay_helpers import replayed_logprobs
from tests.trainer_helpers import CORRECTION, QUESTIONS, small_round_config, trainer_settings
from trainer.round import run_round

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def serve_and_rate(engine: Engine, store: FeedbackStore, n: int, seed: int = 0) -> None:
    """``n`` one-exchange conversations answered by the engine and logged as the chat API logs them, rated
    1-5 at random; every third reply gets an expert correction."""
    rng = random.Random(seed)
    for i in range(n):
        question = QUESTIONS[i % len(QUESTIONS)]
        conv, token = store.conversations.start("base")
        store.conversations.append_customer(conv.id, token, question)
        gen = engine.generate([{"role": "user", "content": question}], "base")
        turn = store.conversations.append_bot(conv.id, BotTurn(
            index=0, text=gen.text, context=gen.context, prompt_token_ids=gen.prompt_token_ids,
            reply_token_ids=gen.reply_token_ids, logprobs=gen.logprobs, adapter_version=gen.adapter_version,
            latency_ms=gen.latency_ms, finished=gen.finished, created_at=time.time()))
        store.ratings.rate(conv.id, token, rng.randint(1, 5))
        if i % 3 == 0:
            store.annotations.annotate(conv.id, turn.index, "expert1", -1, tags=["unhelpful"],
                                       corrected_reply=CORRECTION)


@pytest.mark.parametrize("family", ["smollm2", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_a_round_on_the_bots_own_replies_is_released_and_served(family, settings, store, family_model_dir,
                                                                tmp_path: Path) -> None:
    model_dir = family_model_dir(family)
    tsettings = trainer_settings(settings, tmp_path, model_dir)
    store = FeedbackStore.from_settings(tsettings, announce=False)  # its adapters directory is the round's
    engine = Engine(tsettings, store, idle_unload_s=0.0, resync_s=1.0)
    engine.start()
    try:
        serve_and_rate(engine, store, n=24)
        config = small_round_config()
        config.gate.pass_status = "active"
        run = run_round(tsettings, store, config=config, show_progress=False)
        assert run.status == "succeeded", run.metrics.get("gate_reasons")
        assert store.adapters.active() == run.adapter_version == "v0001"
        metrics = run.metrics
        assert metrics["pairs_correction"] > 0 and metrics["gate_contexts"] >= 1
        served_eos = sum(t.turn.finished for t in store.feedback.export(after=0)[0]) / 24
        assert 0.0 < served_eos < 1.0 and 0.0 <= metrics["ppo"]["eos_share"] <= 1.0

        wait_for(lambda: engine.choose_version() == "v0001" or bool(engine.refused_versions()))
        assert engine.refused_versions() == {}
        gen = engine.generate([{"role": "user", "content": QUESTIONS[0]}], engine.choose_version())
    finally:
        engine.stop()
    assert gen.adapter_version == "v0001"
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir),
                                       store.adapters.get("v0001").path).eval()
    replay = replayed_logprobs(policy, gen.prompt_token_ids, gen.reply_token_ids, tsettings.temperature,
                               engine.figure_guard(gen.grounds), tsettings.max_reply_tokens)
    assert gen.logprobs == pytest.approx(replay, abs=1e-4)  # under the figure guard the engine sampled with
