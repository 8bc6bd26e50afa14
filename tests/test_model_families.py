"""Serving and training on other architectures than the tiny Llama (``tests/model_families``): GPT-2
(Conv1D, no pad token, absolute positions), Qwen2 (biased q/k/v, ChatML) and a Llama with SmolLM2's
tokenizer setup (ChatML, pad = EOS). Each goes through batched serving, a PPO step, the reward model,
SFT and KTO, and a released adapter hot-swapped into the bot while it serves."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from bot.runtime import Engine, Generation
from feedback_store import FeedbackStore
from loopdesk.causal_lm import context_length, load_tokenizer
from loopdesk.config import Settings
from tests.adapter_helpers import adapters_home, wait_for
from tests.model_families import FAMILIES, IM_END
from tests.replay_helpers import replayed_logprobs
from trainer.baselines import Example, kto_update, sft_trainer, sft_update
from trainer.config import BaselineConfig, PPOConfig, RewardModelConfig
from trainer.policy import PolicyWithValueHead
from trainer.ppo import PPOTrainer
from trainer.release import release_adapter
from trainer.reward_model import PreferencePair, RewardModel
from trainer.samples import collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTIONS = ["Where is my order?", "How do I return a tent that arrived damaged? " * 2, "Hi",
             "Can I change the shipping address of my order, please? " * 3]
REPLY_TOKENS = 24


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(ask(question), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def model_dir(family: str, family_model_dir) -> Path:
    return family_model_dir(family)


@pytest.fixture
def engine(settings: Settings, store: FeedbackStore, model_dir: Path) -> Engine:
    engine = Engine(settings.replace(base_model=str(model_dir), max_reply_tokens=REPLY_TOKENS), store,
                    idle_unload_s=0.0, resync_s=1.0)
    engine.start()
    yield engine
    engine.stop()


def served_concurrently(engine: Engine, version: str, n: int = 8) -> list[Generation]:
    results: list[Generation] = []

    def client(i: int) -> None:
        results.append(engine.generate(ask(QUESTIONS[i % len(QUESTIONS)]), version))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n
    return results


def replayed(model: torch.nn.Module, gen: Generation, engine: Engine) -> list[float]:
    """Log-probs of the reply tokens from one unbatched, unpadded forward pass over prompt + reply, under the
    engine's figure guard."""
    return replayed_logprobs(model, gen.prompt_token_ids, gen.reply_token_ids, engine.settings.temperature,
                             engine.figure_guard(gen.grounds), engine.settings.max_reply_tokens)


def test_batched_serving_keeps_each_replys_logprobs_and_closing_eos(engine: Engine, model_dir: Path) -> None:
    eos = engine.tokenizer.eos_token_id
    gens = served_concurrently(engine, "base", n=12)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for gen in gens:
        assert gen.logprobs == pytest.approx(replayed(model, gen, engine), abs=1e-4)
        assert gen.finished == (gen.reply_token_ids[-1] == eos) and eos not in gen.reply_token_ids[:-1]
        assert gen.finished or len(gen.reply_token_ids) == REPLY_TOKENS
        assert engine.tokenizer(gen.context, add_special_tokens=False).input_ids == gen.prompt_token_ids
    finished = [g for g in gens if g.finished]
    assert finished and len(finished) < len(gens)  # replies that ended on EOS and replies cut at the budget
    assert all(IM_END not in g.text and "<|endoftext|>" not in g.text for g in gens)


def test_a_long_chat_is_cut_to_the_models_own_context_length(engine: Engine, model_dir: Path) -> None:
    chat = []
    for i in range(20):
        chat += [{"role": "user", "content": f"question {i} about my order"},
                 {"role": "assistant", "content": f"answer {i}, thank you for waiting"}]
    gen = engine.generate(chat + ask("the latest question"), "base")
    positions = context_length(AutoConfig.from_pretrained(model_dir))
    assert len(gen.prompt_token_ids) + REPLY_TOKENS <= positions < len(gen.prompt_token_ids) + 2 * REPLY_TOKENS
    assert "the latest question" in gen.context and "question 0 " not in gen.context


def small_ppo() -> PPOConfig:
    return PPOConfig(batch_size=8, mini_batch_size=4, max_new_tokens=16, learning_rate=5e-3, ppo_epochs=2)


def test_a_ppo_trained_adapter_is_released_and_hot_swapped_into_the_serving_bot(
        engine: Engine, store: FeedbackStore, model_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(model_dir))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = small_ppo()
    policy = PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(model_dir), config)
    ppo = PPOTrainer(policy, config, eos, pad)
    prompts = [prompt_ids(tokenizer, QUESTIONS[i % len(QUESTIONS)]) for i in range(8)]

    samples = ppo.rollout(prompts)  # left-padded prompts of different lengths, as the bot batches them
    batch = collate(samples, pad, eos, torch.device("cpu"))
    rescored, _, _ = ppo._score(batch, grad=False)
    torch.testing.assert_close(rescored * batch.reply_mask, batch.behaviour_logprobs, atol=1e-4, rtol=0)
    assert batch.ended.tolist() == [s.reply_ids[-1] == eos for s in samples]
    assert batch.reply_mask.sum(1).tolist() == [len(s.reply_ids) for s in samples]  # a closing EOS is kept
    for sample, reward in zip(samples, [1.0 if s.reply_ids[-1] == eos else -1.0 for s in samples]):
        sample.reward = reward
    stats = ppo.step(samples)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["eos_share"] == pytest.approx(sum(batch.ended.tolist()) / 8) and stats["updates"] >= 1

    candidate = tmp_path / "candidate"
    ppo.save(str(candidate))
    stop, failures, served = threading.Event(), [], []

    def customer() -> None:  # requests in flight while the adapter is installed between two steps
        while not stop.is_set():
            try:
                served.append(engine.generate(ask("Where is my order?"), engine.choose_version()).adapter_version)
            except BaseException as exc:
                failures.append(exc)

    clients = [threading.Thread(target=customer) for _ in range(3)]
    for c in clients:
        c.start()
    try:
        wait_for(lambda: bool(served))
        version = store.adapters.next_version()
        release_adapter(store, adapters_home(store), candidate, version=version, base_model=str(model_dir),
                        parent="base", metrics={}, data_watermark=0, status="active")
        wait_for(lambda: engine.choose_version() == version or bool(engine.refused_versions()))
        assert engine.refused_versions() == {}
        gens = served_concurrently(engine, version, n=4)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert failures == [] and {"base", version} <= set(served)
    served_policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir),
                                              str(adapters_home(store) / version)).eval()
    for gen in gens:
        assert gen.adapter_version == version
        assert gen.logprobs == pytest.approx(replayed(served_policy, gen, engine), abs=1e-4)
    with served_policy.disable_adapter():
        assert gens[0].logprobs != pytest.approx(replayed(served_policy, gens[0], engine),
                                                 abs=1e-3)


def test_the_reward_model_scores_a_finished_reply_at_its_closing_eos(model_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(model_dir))
    eos = tokenizer.eos_token_id
    prompt = prompt_ids(tokenizer, "Where is my order?")
    good, bad = (tokenizer(t, add_special_tokens=False).input_ids for t in ("It ships today.", "No idea, sorry"))
    pairs = [PreferencePair((prompt, good + [eos]), (prompt, bad + [eos]), "correction"),
             PreferencePair((prompt, good + [eos]), (prompt, good), "reward")] * 4
    model = RewardModel.train(str(model_dir), pairs, RewardModelConfig(epochs=2, batch_size=4, learning_rate=3e-3),
                              tmp_path)
    model.save(tmp_path / "rm")
    loaded = RewardModel.load(str(model_dir), tmp_path / "rm")
    sequences = [(prompt, good + [eos]), (prompt, good), (prompt[:3], bad), (prompt, bad + [eos])]
    batched = loaded.score_ids(sequences)  # right-padded to one width with the pad token (EOS for two families)
    assert batched == pytest.approx(model.score_ids(sequences), abs=1e-5)
    assert batched[0] != pytest.approx(batched[1], abs=1e-4)  # the closing EOS is scored, not skipped as padding

    plain = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    reference = PeftModel.from_pretrained(plain, str(tmp_path / "rm")).eval()
    reference.config.pad_token_id = -1  # no token is padding: one unpadded row is scored at its last token
    with torch.no_grad():
        alone = [reference(input_ids=torch.tensor([p + r])).logits.item() for p, r in sequences]
    assert batched == pytest.approx(alone, abs=1e-4)


def test_sft_and_kto_train_on_token_ids_whatever_the_chat_template(model_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(model_dir))
    eos = tokenizer.eos_token_id
    prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    replies = [tokenizer(t, add_special_tokens=False).input_ids + [eos] for t in ("It ships today.", "Sure!")]
    examples = [Example(p, r, desirable=i % 2 == 0) for i, p in enumerate(prompts) for r in replies]
    config = BaselineConfig(batch_size=4, sft_max_steps=2, kto_max_steps=2, learning_rate=1e-3)

    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = sft_trainer(lm, tokenizer, examples[:3], config, str(tmp_path / "work"))
    rows = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for row, labels, example in zip(rows["input_ids"], rows["labels"], examples[:3]):
        real = labels[labels != -100].tolist()
        assert real == example.reply  # the reply and its closing EOS carry loss, prompt and padding do not
        assert row[:len(example.prompt)].tolist() == example.prompt

    lora = small_ppo()
    sft_stats = sft_update(str(model_dir), None, examples, config, lora, tmp_path / "sft")
    kto_stats = kto_update(str(model_dir), tmp_path / "sft", examples, config, lora, tmp_path / "kto")
    assert sft_stats["steps"] == kto_stats["steps"] == 2
    assert torch.isfinite(torch.tensor([sft_stats["loss_mean"], kto_stats["loss_mean"]])).all()
    PolicyWithValueHead.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "kto")
