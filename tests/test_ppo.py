"""LoRA PPO on a real (random-init, tiny) Llama: learning, on-policy ratios, value head, logged data."""

from __future__ import annotations

import math
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainer.config import PPOConfig
from trainer.samples import LoggedSample, Sample, collate
from trainer.policy import PolicyWithValueHead
from trainer.ppo import PPOTrainer, gae

VOCAB, PAD, BOS, EOS = 32, 0, 1, 2
TARGET = 7  # the toy task rewards replies containing this token


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are overhead-bound: one thread is ~10x faster than two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama; initializer_range 0.2 gives logits a scale LoRA can move."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


def make_trainer(**overrides) -> PPOTrainer:
    # one pass per step at 2e-3: the mechanics below count updates and ratios of a single pass
    config = PPOConfig(**({"max_new_tokens": 6, "missing_eos_penalty": 0.0, "ppo_epochs": 1, "learning_rate": 2e-3}
                          | overrides))
    policy = PolicyWithValueHead.with_new_adapter(tiny_llama(), config)
    return PPOTrainer(policy, config, eos_token_id=EOS, pad_token_id=PAD)


def random_prompts(n: int, generator: torch.Generator, first: int | None = None) -> list[list[int]]:
    """Prompts of 2-5 ordinary tokens; ``first`` fixes the leading token."""
    prompts = []
    for _ in range(n):
        length = int(torch.randint(2, 6, (1,), generator=generator))
        prompt = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        prompts.append(prompt if first is None else [first] + prompt)
    return prompts


def contains_target(samples: list[tuple[list[int], list[int]]]) -> list[float]:
    return [float(TARGET in reply) for _, reply in samples]


def test_gae_matches_hand_computation():
    # one reply of 2 tokens, γ = 1, λ = 0.5: δ1 = 1 − 0.5 = 0.5, δ0 = 0 + 0.5 − 0.2 = 0.3
    rewards, values = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.2, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.3 + 0.5 * 0.5, 0.5, 0.0])
    assert returns[0].tolist() == pytest.approx([0.75, 1.0, 0.0])


def test_ppo_learns_toy_task_within_40_updates_and_bounded_kl():
    # Random base: P(reply contains TARGET) ≈ 0.1. On a random net LoRA can only move the target
    # logit by reshaping every distribution, so the optimum costs ~8 nats: the target is set there.
    trainer = make_trainer(learning_rate=1e-2, init_kl_coef=0.05, kl_target=8.0)
    generator = torch.Generator().manual_seed(1)
    history = []
    for _ in range(40):  # seed 0 needs 22; seeds 1-4 needed 21-33
        history.append(trainer.step_on_prompts(random_prompts(32, generator), contains_target))
        if len(history) >= 3 and sum(s["reward_mean"] for s in history[-3:]) / 3 >= 0.9:
            break
    assert history[0]["reward_mean"] < 0.3
    assert sum(s["reward_mean"] for s in history[-3:]) / 3 >= 0.9, [s["reward_mean"] for s in history]
    assert max(s["kl"] for s in history) <= 1.5 * trainer.config.kl_target
    print(f"updates to optimum: {len(history)}, final KL {history[-1]['kl']:.2f} nats, "
          f"max KL {max(s['kl'] for s in history):.2f}, kl_coef {history[-1]['kl_coef']:.3f}")


def test_on_policy_ratio_is_one_on_first_minibatch():
    trainer = make_trainer(batch_size=16, mini_batch_size=16, max_new_tokens=8)
    prompts = random_prompts(16, torch.Generator().manual_seed(2))
    stats = trainer.step_on_prompts(prompts, contains_target)
    assert stats["updates"] == 1
    assert stats["ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert stats["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert stats["clipfrac"] == 0.0


def test_value_head_explained_variance_rises_on_a_fixed_task():
    # The return is fixed by the prompt's first token (3 → 1, 4 → 0) and no KL term.
    trainer = make_trainer(learning_rate=1e-2, init_kl_coef=0.0, max_new_tokens=4)
    generator = torch.Generator().manual_seed(3)

    def by_marker(samples):
        return [float(prompt[0] == 3) for prompt, _ in samples]

    ev = []
    for step in range(20):
        prompts = random_prompts(16, generator, first=3) + random_prompts(16, generator, first=4)
        ev.append(trainer.step_on_prompts(prompts, by_marker)["explained_variance"])
    print("explained variance per step:", [round(v, 2) for v in ev])
    assert ev[0] == pytest.approx(0.0)  # the value head starts at zero
    early, late = sum(ev[:5]) / 5, sum(ev[-5:]) / 5
    assert late > 0.5 and late > early + 0.2, ev


def test_logged_samples_skip_stale_and_clip_off_policy_ratios():
    trainer = make_trainer(batch_size=16, mini_batch_size=16, train_temperature=None)  # trains as it serves
    now = time.time()
    samples = trainer.rollout(random_prompts(16, torch.Generator().manual_seed(4)))
    stale_age = trainer.config.max_episode_age_s + 60
    logged = [
        LoggedSample(
            e.prompt_ids, e.reply_ids,
            [lp - 0.5 for lp in e.behaviour_logprobs],  # the serving adapter liked these less
            reward=float(i % 2), adapter_version="v1",
            timestamp=now - (stale_age if i % 4 == 0 else 60),
        )
        for i, e in enumerate(samples)
    ]
    stats = trainer.step_on_logged(logged, now=now)
    assert stats["skipped_stale"] == 4
    assert stats["episodes"] == 12
    # π/π_behaviour = e^0.5 ≈ 1.65 on every token, beyond 1 + 0.2: the clip binds wherever the
    # advantage is positive (about half the tokens after whitening), never where it is negative.
    assert stats["ratio_min"] == pytest.approx(math.exp(0.5), rel=1e-4)
    assert stats["ratio_max"] == pytest.approx(math.exp(0.5), rel=1e-4)
    assert 0.2 < stats["clipfrac"] < 0.8
    assert stats["behaviour_rescored"] == 0.0


def test_trained_hotter_than_served_rollouts_and_logged_steps_use_the_training_temperature():
    trainer = make_trainer(batch_size=16, mini_batch_size=16, temperature=0.5, train_temperature=1.0)
    samples = trainer.rollout(random_prompts(16, torch.Generator().manual_seed(5)))
    batch = collate(samples, PAD, EOS, torch.device("cpu"))
    with torch.no_grad():
        logits, _ = trainer.policy(batch.input_ids, batch.attention_mask)
    start, end = batch.prompt_width - 1, batch.input_ids.shape[1] - 1
    tokens = batch.reply_ids.unsqueeze(-1)
    at = {t: torch.log_softmax(logits[:, start:end] / t, -1).gather(-1, tokens).squeeze(-1) * batch.reply_mask
          for t in (1.0, 0.5)}
    # rollouts record the policy's log-probs at the training temperature, not the serving one
    assert torch.allclose(batch.behaviour_logprobs, at[1.0], atol=1e-5)
    assert not torch.allclose(batch.behaviour_logprobs, at[0.5], atol=1e-2)
    served = [LoggedSample(e.prompt_ids, e.reply_ids, at[0.5][i, : len(e.reply_ids)].tolist(), float(i % 2), "v1",
                           timestamp=time.time()) for i, e in enumerate(samples)]
    stats = trainer.step_on_logged(served)
    # the serving-temperature log-probs are recomputed at 1.0 with the policy before the step: ratio 1
    assert stats["behaviour_rescored"] == 1.0 and stats["updates"] == 1
    assert stats["ratio_min"] == pytest.approx(1.0, abs=1e-5) and stats["ratio_max"] == pytest.approx(1.0, abs=1e-5)


def test_train_temperature_must_be_positive_or_none():
    assert PPOConfig(train_temperature=None, temperature=0.6).policy_temperature == 0.6
    assert PPOConfig(train_temperature=1.3, temperature=0.6).policy_temperature == 1.3
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="train_temperature"):
            PPOConfig(train_temperature=bad)


def test_all_stale_logged_samples_make_no_update():
    trainer = make_trainer()
    sample = LoggedSample([5, 6], [8, EOS], [-1.0, -1.0], 1.0, "v1", timestamp=0.0)
    assert trainer.step_on_logged([sample], now=1e9) == {"skipped_stale": 1.0}


def test_adapter_and_value_head_round_trip(tmp_path):
    trainer = make_trainer(learning_rate=1e-2)
    trainer.step_on_prompts(random_prompts(32, torch.Generator().manual_seed(5)), contains_target)
    trainer.save(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    loaded = PolicyWithValueHead.from_pretrained(tiny_llama(), tmp_path / "adapter").eval()
    ids = torch.tensor([[BOS, 5, 6, 7]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected, got = trainer.unwrapped(ids, mask), loaded(ids, mask)
    assert torch.allclose(expected[0], got[0], atol=1e-6)
    assert torch.allclose(expected[1], got[1], atol=1e-6)
    assert expected[1].abs().sum() > 0  # the value head was trained, not zero


def test_a_frozen_adapter_as_reference_stays_put_while_the_policy_moves(tmp_path):
    # The start adapter: one trained step away from the base, saved, then loaded twice: as the
    # trained policy and as the frozen KL reference (InstructGPT's KL to its SFT model).
    start = make_trainer(learning_rate=1e-2)
    start.step_on_prompts(random_prompts(32, torch.Generator().manual_seed(6)), contains_target)
    start.save(str(tmp_path / "start"))
    policy = PolicyWithValueHead.from_pretrained(tiny_llama(), tmp_path / "start")
    policy.freeze_reference(tmp_path / "start")
    config = PPOConfig(max_new_tokens=6, missing_eos_penalty=0.0, ppo_epochs=1, learning_rate=1e-2)
    trainer = PPOTrainer(policy, config, eos_token_id=EOS, pad_token_id=PAD)
    ids, mask = torch.tensor([[BOS, 5, 6, 7, 8]]), torch.ones(1, 5, dtype=torch.long)

    def logits(reference: bool = False, base: bool = False) -> torch.Tensor:
        with torch.no_grad():
            if base:
                with policy.lm.disable_adapter():
                    return policy(ids, mask)[0]
            if reference:
                with policy.reference():
                    return policy(ids, mask)[0]
            return policy(ids, mask)[0]

    start_logits = logits()
    assert torch.allclose(logits(reference=True), start_logits, atol=1e-6)
    assert not torch.allclose(logits(base=True), start_logits, atol=1e-3)  # the reference is not the base
    first = trainer.step_on_prompts(random_prompts(32, torch.Generator().manual_seed(7)), contains_target)
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)  # rollouts of the start policy: no drift from it yet
    for seed in (8, 9):
        stats = trainer.step_on_prompts(random_prompts(32, torch.Generator().manual_seed(seed)), contains_target)
    assert stats["kl"] > 0.0
    assert torch.allclose(logits(reference=True), start_logits, atol=1e-6)  # frozen: not trained
    assert not torch.allclose(logits(), start_logits, atol=1e-3)  # the policy moved
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and not any(".reference." in n for n in trainable)

    trainer.save(str(tmp_path / "candidate"))  # the trained adapter alone, in the layout a release copies
    assert not (tmp_path / "candidate" / "reference").exists()
    loaded = PolicyWithValueHead.from_pretrained(tiny_llama(), tmp_path / "candidate").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask)[0], logits(), atol=1e-6)


def test_ptx_term_makes_every_update_imitate_the_demonstrations():
    # No reward signal at all (every reply scores 0): only the ptx term can teach the demonstration.
    demonstration = ([BOS, 5, 6], [TARGET, TARGET, 9, EOS])
    prompts = [[BOS, 5, 6]] * 16

    def demonstration_logprob(trainer: PPOTrainer) -> float:
        sample = Sample(*demonstration, [0.0] * len(demonstration[1]))
        logprobs, _, _ = trainer._score(collate([sample], PAD, EOS, trainer.accelerator.device), grad=False)
        return float(logprobs.sum())

    def zero(samples):
        return [0.0] * len(samples)

    moved = {}
    for coef in (0.0, 1.0):
        trainer = make_trainer(batch_size=16, mini_batch_size=8, ptx_coef=coef, ptx_batch_size=4)
        trainer.add_demonstrations([demonstration])
        before = demonstration_logprob(trainer)
        for _ in range(5):
            stats = trainer.step_on_prompts(prompts, zero)
        moved[coef] = demonstration_logprob(trainer) - before
        assert ("ptx_loss" in stats) == (coef > 0)
    assert moved[1.0] > 2.0 and moved[1.0] > moved[0.0] + 2.0, moved  # nats of the 4-token demonstration
