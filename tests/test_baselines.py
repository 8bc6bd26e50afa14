"""The SFT and KTO baselines (``trainer.baselines``) with the real test-size model: what they train on,
that TRL computes the loss we mean (reply tokens only; KTO's reference = the base model), that the
updates move log-probs the right way, and that a round run with either releases a servable adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.runtime.adapters import read_verified
from feedback_store.records import Annotation, BotTurn, TurnWithFeedback
from trainer.baselines import (Example, kto_examples, kto_trainer, kto_update, load_policy, sft_examples,
                               sft_trainer, sft_update)
from trainer.config import BaselineConfig, PPOConfig, RewardBuilderConfig
from trainer.round_config import RoundConfig
from loopdesk.adapter_format import VALUE_HEAD_FILE
from trainer.policy import PolicyWithValueHead
from trainer.rewards import build_rewards
from trainer.round import NotEnoughFeedback, feedback_turn, run_round
from tests.trainer_helpers import (CORRECTION, generated_replies, seed_conversations, small_round_config,
                                   trainer_settings)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STARS = (5, 2, 4, 1)  # by turn number mod 4; the 2-star turns are also corrected by an expert
FAST = BaselineConfig(learning_rate=1e-2, sft_max_steps=30, kto_max_steps=30, batch_size=4)


@pytest.fixture
def turns(base_model_dir) -> list[TurnWithFeedback]:
    """16 logged turns of the real tiny model, rated by ``STARS``, every fourth (2 stars) corrected."""
    out = []
    for i, (question, context, prompt, reply, logprobs, text, finished) in enumerate(
            generated_replies(Path(base_model_dir), 16, 1, 12)):
        conv = f"c{i}"
        turn = BotTurn(index=0, text=text, context=context, prompt_token_ids=prompt, reply_token_ids=reply,
                       logprobs=logprobs, adapter_version="base", latency_ms=5.0, finished=finished,
                       created_at=0.0)
        notes = [Annotation(conversation_id=conv, turn_index=0, expert_id="expert1", score=-1,
                            corrected_reply=CORRECTION)] if i % 4 == 1 else []
        out.append(TurnWithFeedback(conversation_id=conv, turn=turn, customer_text=question,
                                    csat=STARS[i % 4], annotations=notes, conversation_started_at=0.0))
    return out


@pytest.fixture
def rewards(turns) -> dict[tuple[str, int], float]:
    return {(r.conversation_id, r.turn_index): r.reward
            for r in build_rewards(map(feedback_turn, turns), RewardBuilderConfig())}


@pytest.fixture
def tokenizer(base_model_dir):
    return AutoTokenizer.from_pretrained(base_model_dir)


def base_lm(base_model_dir):
    return AutoModelForCausalLM.from_pretrained(base_model_dir).eval()


def candidate_lm(base_model_dir, path: Path):
    return PolicyWithValueHead.from_pretrained(base_lm(base_model_dir), path, is_trainable=False).lm.eval()


@torch.no_grad()
def reply_logprob(model, example: Example) -> float:
    """Σ log π(reply | prompt) under ``model``."""
    ids = torch.tensor([example.prompt + example.reply])
    logits = model(input_ids=ids).logits[0, len(example.prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(example.reply)[:, None]).sum().item()


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_examples_come_from_good_replies_corrections_and_corrected_replies(turns, rewards, tokenizer):
    correction = tokenizer(CORRECTION, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    by_star = {s: [(list(e.turn.prompt_token_ids), list(e.turn.reply_token_ids))
                   for i, e in enumerate(turns) if STARS[i % 4] == s] for s in STARS}
    corrections = [(list(e.turn.prompt_token_ids), correction) for i, e in enumerate(turns) if i % 4 == 1]

    sft = sft_examples(turns, rewards, tokenizer, BaselineConfig())
    assert all(e.desirable for e in sft)
    assert sorted((e.prompt, e.reply) for e in sft) == sorted(by_star[5] + by_star[4] + corrections)
    assert sorted((e.prompt, e.reply) for e in sft if e.source == "correction") == sorted(corrections)

    kto = kto_examples(turns, rewards, tokenizer, BaselineConfig())
    assert sorted((e.prompt, e.reply) for e in kto if e.desirable) == sorted(by_star[5] + by_star[4] + corrections)
    assert sorted((e.prompt, e.reply) for e in kto if not e.desirable) == sorted(by_star[2] + by_star[1])
    strict = kto_examples(turns, rewards, tokenizer, BaselineConfig(kto_up=0.9, kto_down=-0.9))
    assert len(strict) == len(kto) - len(by_star[4])  # 4 stars (0.5) is no longer a thumb up


def test_sft_puts_the_loss_on_reply_tokens_only(base_model_dir, turns, rewards, tokenizer, tmp_path):
    examples = sft_examples(turns, rewards, tokenizer, BaselineConfig())
    policy = load_policy(str(base_model_dir), None, PPOConfig())
    trainer = sft_trainer(policy.lm, tokenizer, examples, FAST, str(tmp_path))
    rows = sorted((r["input_ids"], r["labels"]) for r in trainer.train_dataset)
    assert rows == sorted((e.prompt + e.reply, [-100] * len(e.prompt) + e.reply) for e in examples)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    logits = policy.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # token t is predicted at position t - 1
    ours = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(ours.item(), rel=1e-4)


def test_sft_raises_the_log_prob_of_good_replies_and_corrections(base_model_dir, turns, rewards, tokenizer,
                                                                  tmp_path):
    examples = sft_examples(turns, rewards, tokenizer, BaselineConfig())
    stats = sft_update(str(base_model_dir), None, examples, FAST, PPOConfig(), tmp_path / "candidate")
    assert stats["steps"] == FAST.sft_max_steps and stats["examples"] == len(examples) == 12
    assert stats["corrections"] == 4 and stats["train_s"] > 0 and stats["loss_final"] < stats["loss_mean"] + 1

    assert {p.name for p in (tmp_path / "candidate").iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", VALUE_HEAD_FILE}
    assert all(not t.any() for t in load_file(str(tmp_path / "candidate" / VALUE_HEAD_FILE)).values())
    base, tuned = base_lm(base_model_dir), candidate_lm(base_model_dir, tmp_path / "candidate")
    for source, gain in (("logged", 0.5), ("correction", 2.0)):  # the one correction repeats, so it gains most
        chosen = [e for e in examples if e.source == source]
        before, after = mean(reply_logprob(base, e) for e in chosen), mean(reply_logprob(tuned, e) for e in chosen)
        assert after > before + gain, (source, before, after)


def active_adapter(base_model_dir, path: Path) -> Path:
    """A LoRA adapter far from zero, as an active adapter after a few rounds would be."""
    policy = PolicyWithValueHead.with_new_adapter(base_lm(base_model_dir), PPOConfig())
    with torch.no_grad():
        for name, param in policy.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    policy.save_pretrained(path)
    return path


def test_kto_scores_the_reference_with_the_base_model_when_starting_from_an_active_adapter(
        base_model_dir, turns, rewards, tokenizer, tmp_path):
    examples = kto_examples(turns, rewards, tokenizer, BaselineConfig())
    policy = load_policy(str(base_model_dir), active_adapter(base_model_dir, tmp_path / "active"), PPOConfig())
    trainer = kto_trainer(policy.lm, tokenizer, examples, FAST, str(tmp_path / "work"))
    assert list(trainer.model.peft_config) == ["default"]  # TRL's copy of the loaded adapter is gone

    rows = [trainer.train_dataset[i] for i in range(4)]
    replies = [r["completion_ids"] for r in rows]
    assert [r["KL_completion_ids"] for r in rows] == replies[-1:] + replies[:-1]  # each prompt, another's reply
    reference, _ = trainer.compute_ref_log_probs(trainer.model, trainer.data_collator(rows))
    sequences = [Example(r["prompt_ids"], r["completion_ids"]) for r in rows]
    base = base_lm(base_model_dir)
    assert reference.tolist() == pytest.approx([reply_logprob(base, e) for e in sequences], abs=1e-3)
    policy.lm.eval()
    assert mean(abs(reply_logprob(policy.lm, e) - r) for e, r in zip(sequences, reference.tolist())) > 0.5


def test_kto_raises_desirable_and_lowers_undesirable_log_prob_margins(base_model_dir, turns, tokenizer, tmp_path):
    """A thumb up for one reply and a thumb down for another after each logged prompt: the margins
    log π/π_base move apart, the good one's up and the bad one's down."""
    good, bad = (tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for text in (CORRECTION, "No idea, ask someone else."))
    examples = [Example(list(e.turn.prompt_token_ids), reply, reply is good)
                for e in turns for reply in (good, bad)]
    stats = kto_update(str(base_model_dir), None, examples, FAST, PPOConfig(), tmp_path / "candidate")
    assert (stats["desirable"], stats["undesirable"], stats["steps"]) == (16, 16, FAST.kto_max_steps)
    assert stats["kl_final"] is not None and stats["reward_margin_final"] > 0 and stats["train_s"] > 0
    base, tuned = base_lm(base_model_dir), candidate_lm(base_model_dir, tmp_path / "candidate")
    margins = [(e.desirable, reply_logprob(tuned, e) - reply_logprob(base, e)) for e in examples]
    up = mean(m for desirable, m in margins if desirable)
    down = mean(m for desirable, m in margins if not desirable)
    assert up > 1.0 and down < -1.0, (up, down)


@pytest.fixture
def tsettings(settings, tmp_path, base_model_dir):
    return trainer_settings(settings, tmp_path, base_model_dir)


@pytest.mark.parametrize("method", ["sft", "kto"])
def test_a_baseline_round_releases_a_candidate_the_bot_can_serve(method, tsettings, store, base_model_dir):
    seed_conversations(store, base_model_dir)
    config = small_round_config(method=method, baseline=BaselineConfig(batch_size=4))  # PPO's compute
    run = run_round(tsettings, store, config=config, show_progress=False)
    assert run.status == "succeeded" and run.adapter_version == "v0001"
    adapter = store.adapters.get("v0001")
    assert adapter.status == "canary" and adapter.parent == "base"
    read_verified(adapter.path, "v0001", tsettings.base_model_ref, adapters_dir=tsettings.adapters_dir,
                  expected_sha256=adapter.sha256)
    PolicyWithValueHead.from_pretrained(base_lm(base_model_dir), adapter.path)

    stats = run.metrics["baseline"]
    # PPO's round here: (1 logged + 1 rollout step) x 8 samples x 4 epochs = 64 gradient passes, plus PPO-ptx's
    # 2 steps x 2 minibatch updates x 4 epochs x 8 demonstrations = 128: 192 passes = 48 steps of 4
    assert config.baseline_steps() == 48 and stats["max_steps"] == stats["steps"] == 48
    assert stats["method"] == method and stats["examples"] > 0
    assert stats["train_s"] > 0 and stats["loss_final"] is not None and "ppo" not in run.metrics
    events = [e for _, e in store.runs.progress(run.id)]
    assert [e["stage"] for e in events] == ["export", "rewards", "reward_model", method, "gate", "release", "done"]
    assert all(e["total"] == len(events) for e in events) and events[-1]["step"] == len(events)


def test_a_baseline_round_without_examples_fails_and_keeps_the_watermark(tsettings, store, base_model_dir):
    seed_conversations(store, base_model_dir, stars=(2, 3), correct_every=0)  # rewards -0.5 and 0, no corrections
    with pytest.raises(NotEnoughFeedback, match="no sft examples"):
        run_round(tsettings, store, config=small_round_config(method="sft"), show_progress=False)
    (run,) = store.runs.list()
    assert run.status == "failed" and store.runs.training_watermark() == 0 and store.adapters.list() == []


def test_an_unknown_method_or_inconsistent_thresholds_are_clear_errors():
    with pytest.raises(ValueError, match="method must be one of ppo, sft, kto; got 'dpo'"):
        RoundConfig(method="dpo")
    with pytest.raises(ValueError, match="method must be one of"):
        RoundConfig.from_dict({"method": "SFT"})
    config = RoundConfig.from_dict({"method": "kto", "baseline": {"kto_beta": 0.2, "kto_max_steps": 0}})
    assert config.baseline == BaselineConfig(kto_beta=0.2, kto_max_steps=0) and config.update_events == 1
    # (10 logged + 30 rollout steps) x 32 samples x 4 epochs = 5120 passes, and PPO-ptx's 40 steps x 4 minibatch
    # updates x 4 epochs x 8 demonstrations = 5120 more: 1280 steps of 8
    assert RoundConfig().baseline_steps() == 1280
    assert RoundConfig.from_dict({"ppo": {"ptx_coef": 0}}).baseline_steps() == 640
    capped = {"match_ppo_compute": False, "sft_max_steps": 50, "kto_max_steps": 0}
    assert RoundConfig.from_dict({"method": "sft", "baseline": capped}).baseline_steps() == 50
    assert RoundConfig.from_dict({"method": "kto", "baseline": capped}).baseline_steps() == 0
    assert RoundConfig.from_dict(config.to_dict()) == config and RoundConfig().update_events == RoundConfig().logged_steps + RoundConfig().rollout_steps
    with pytest.raises(ValueError, match="ptx_coef must be a finite number >= 0"):
        RoundConfig.from_dict({"ppo": {"ptx_coef": -1}})
    with pytest.raises(ValueError, match="kl_reference must be one of base, start; got 'sft'"):
        RoundConfig(kl_reference="sft")
    with pytest.raises(ValueError, match="kto_down"):
        BaselineConfig(kto_up=0.5, kto_down=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        BaselineConfig(batch_size=1)
