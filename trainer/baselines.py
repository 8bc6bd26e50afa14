"""Baseline policy updates on a round's logged turns, to compare PPO against: SFT and KTO.

Both train the policy's LoRA with a TRL trainer on token ids (the logged prompt ids, exactly as the
bot saw them, then the reply ids; no decode and re-tokenize), starting from the active adapter or
from a fresh one shaped like PPO's (``PPOConfig`` rank, alpha, dropout, targets), and write the
candidate as PPO does (``PolicyWithValueHead.save_pretrained``: peft adapter + value head, the
active adapter's head carried over, a zero head for a fresh adapter), so the gate, the release, the
bot's hot-swap and a later PPO round take it unchanged.

Examples (``labelled_examples``), from the round's rewards (``trainer.rewards``; thresholds are on
its scale, so in standard deviations if the reward builder whitens):

- every expert correction of a turn, after the turn's prompt, is a desirable reply, and the reply
  it corrects is undesirable whatever its reward;
- so is an agent's first reply after a handoff, after the prompt of the bot turn that led to it
  (``trainer.reward_model.agent_reply_ids``: the last bot turn before it), and that bot reply is
  undesirable whatever its reward;
- any other logged reply is desirable at reward ≥ ``up``, undesirable at reward ≤ ``down``.

**SFT** (``sft_update``) trains on the desirable examples (``up = sft_min_reward``) with TRL's
``SFTTrainer``: −Σ log π(reply | prompt), with a ``labels`` column that is −100 on the prompt, so
only reply tokens (their EOS included) carry loss. **KTO** (``kto_update``) trains on both with
TRL's ``KTOTrainer``: 1 − σ(β(log π/π_ref(y|x) − z₀)) for desirable y, 1 − σ(β(z₀ − log π/π_ref))
for undesirable, z₀ a batch estimate of KL(π‖π_ref) from mismatched prompt/reply pairs. Its
reference is the base model (adapter disabled), as PPO's KL penalty and the gate's KL budget.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from datasets import Dataset
from feedback_store.records import TurnWithFeedback
from transformers import AutoModelForCausalLM, PrinterCallback
from trl import KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from loopdesk.causal_lm import load_tokenizer
from trainer.config import BaselineConfig, PPOConfig
from trainer.policy import PolicyWithValueHead
from trainer.reward_model import agent_reply_ids, correction_ids

REFERENCE_ADAPTER = "ref"  # what KTOTrainer calls the copy of a loaded adapter it would use as reference


@dataclass(frozen=True)
class Example:
    """A reply after its prompt (token ids), with its thumb; ``source`` is ``logged``, ``correction`` or
    ``agent`` (an agent's reply after a handoff)."""

    prompt: list[int]
    reply: list[int]
    desirable: bool = True
    source: str = "logged"


def labelled_examples(turns: Sequence[TurnWithFeedback], rewards: dict[tuple[str, int], float], tokenizer,
                      up: float, down: float) -> list[Example]:
    """Corrections and agents' replies (desirable), and logged replies labelled by reward or by being
    corrected or handed off (module docstring)."""
    examples: list[Example] = []
    for feedback in turns:
        prompt, reply = list(feedback.turn.prompt_token_ids), list(feedback.turn.reply_token_ids)
        if not prompt or not reply:
            continue
        corrections = correction_ids(feedback, tokenizer)
        examples += [Example(prompt, ids, True, "correction") for ids in corrections]
        agent = agent_reply_ids(feedback, tokenizer)
        if agent is not None and agent not in corrections:
            examples.append(Example(prompt, agent, True, "agent"))
        reward = rewards.get((feedback.conversation_id, feedback.turn.index))
        if corrections or agent is not None:
            examples.append(Example(prompt, reply, False))
        elif reward is not None and (reward >= up or reward <= down):
            examples.append(Example(prompt, reply, reward >= up))
    return examples


def sft_examples(turns: Sequence[TurnWithFeedback], rewards: dict[tuple[str, int], float], tokenizer,
                 config: BaselineConfig) -> list[Example]:
    """What SFT (and PPO-ptx) imitates: replies rewarded at least ``sft_min_reward``, every correction and
    every agent's reply after a handoff."""
    return [e for e in labelled_examples(turns, rewards, tokenizer, config.sft_min_reward, -math.inf)
            if e.desirable]


def kto_examples(turns: Sequence[TurnWithFeedback], rewards: dict[tuple[str, int], float], tokenizer,
                 config: BaselineConfig) -> list[Example]:
    """KTO's thumbs: up at reward ≥ ``kto_up``, for corrections and agents' replies; down at ≤ ``kto_down``,
    when corrected and when it led to a handoff an agent answered."""
    return labelled_examples(turns, rewards, tokenizer, config.kto_up, config.kto_down)


def fit(example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt, reply) in ``max_length`` tokens: the reply kept (but one token), the prompt's oldest dropped."""
    reply = example.reply[:max_length - 1]
    return example.prompt[-(max_length - len(reply)):], reply


def load_policy(base_ref: str, active_dir: Path | None, lora: PPOConfig) -> PolicyWithValueHead:
    """The policy a round starts from: the active adapter (trainable) or a fresh one as PPO makes it."""
    base = AutoModelForCausalLM.from_pretrained(base_ref)
    return (PolicyWithValueHead.with_new_adapter(base, lora) if active_dir is None
            else PolicyWithValueHead.from_pretrained(base, active_dir))


def _args(config: BaselineConfig, max_steps: int, work_dir: str) -> dict[str, Any]:
    """TrainingArguments shared by both trainers: plain fp32 steps, no checkpoints, a loss logged per step."""
    return dict(output_dir=work_dir, num_train_epochs=config.epochs, max_steps=max_steps or -1,
                per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
                max_length=None, bf16=False, gradient_checkpointing=False, save_strategy="no", report_to="none",
                disable_tqdm=True, logging_steps=1, seed=config.seed, data_seed=config.seed,
                dataloader_num_workers=0, dataloader_pin_memory=False)


def sft_trainer(lm, tokenizer, examples: Sequence[Example], config: BaselineConfig, work_dir: str):
    """TRL's SFTTrainer on pre-tokenized prompt + reply with the prompt masked out of the loss."""
    rows = []
    for prompt, reply in (fit(e, config.max_length) for e in examples):
        rows.append({"input_ids": prompt + reply, "labels": [-100] * len(prompt) + reply})
    args = SFTConfig(**_args(config, config.sft_max_steps, work_dir), packing=False, padding_free=False)
    return SFTTrainer(model=lm, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


class TokenKTOTrainer(KTOTrainer):
    """KTOTrainer on token ids with the base model as reference.

    TRL tokenizes only text rows; ours come as ``prompt_ids``/``completion_ids``/``label``, so
    preparation is just TRL's KL pairing (each batch's replies rotated by one). Given a PeftModel
    without a ref model, TRL adds a ``ref`` adapter copying the loaded one and scores the reference
    with it; removing that adapter makes TRL score the reference with the adapter disabled.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if REFERENCE_ADAPTER in self.model.peft_config:
            self.model.delete_adapter(REFERENCE_ADAPTER)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        def add_kl_completions(batch: dict[str, list]) -> dict[str, list]:
            return batch | {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}

        return dataset.map(add_kl_completions, batched=True, batch_size=args.per_device_train_batch_size)


def kto_trainer(lm, tokenizer, examples: Sequence[Example], config: BaselineConfig, work_dir: str):
    """TRL's KTOTrainer on pre-tokenized, shuffled examples, reference = the base (adapter disabled)."""
    shuffled = list(examples)
    random.Random(config.seed).shuffle(shuffled)  # KTO samples in order: mix thumbs within batches
    rows = []
    for e in shuffled:
        prompt, reply = fit(e, config.max_length)
        rows.append({"prompt_ids": prompt, "completion_ids": reply, "label": e.desirable})
    n_up = sum(e.desirable for e in examples)
    n_down = len(examples) - n_up
    up_weight = down_weight = 1.0
    if config.kto_balance and n_up and n_down:  # the larger side down to the smaller's total weight
        up_weight, down_weight = min(1.0, n_down / n_up), min(1.0, n_up / n_down)
    args = KTOConfig(**_args(config, config.kto_max_steps, work_dir), beta=config.kto_beta,
                     desirable_weight=up_weight, undesirable_weight=down_weight)
    return TokenKTOTrainer(model=lm, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def _update(method: str, base_ref: str, active_dir: Path | None, examples: Sequence[Example],
            config: BaselineConfig, lora: PPOConfig, out_dir: Path) -> dict[str, Any]:
    """Load, train with the method's TRL trainer, write the candidate; returns the update's stats."""
    if not examples:
        raise ValueError(f"{method} needs at least one example")
    started = time.monotonic()
    policy = load_policy(base_ref, active_dir, lora)
    build = sft_trainer if method == "sft" else kto_trainer
    with tempfile.TemporaryDirectory(prefix=f"{method}-") as work_dir:
        trainer = build(policy.lm, load_tokenizer(base_ref), examples, config, work_dir)
        trainer.remove_callback(PrinterCallback)  # per-step logs stay in log_history, not on stdout
        train_started = time.monotonic()
        result = trainer.train()
        train_s = time.monotonic() - train_started
    policy.save_pretrained(out_dir)

    def last(key: str) -> float | None:  # the last step that logged it (a margin needs both thumbs in a batch)
        return next((h[key] for h in reversed(trainer.state.log_history) if key in h), None)

    stats = {"method": method, "examples": len(examples), "desirable": sum(e.desirable for e in examples),
             "corrections": sum(e.source == "correction" for e in examples),
             "agent_replies": sum(e.source == "agent" for e in examples), "steps": trainer.state.global_step,
             "loss_mean": result.training_loss, "loss_final": last("loss"),
             "train_s": round(train_s, 2), "update_s": round(time.monotonic() - started, 2)}
    if method == "kto":
        stats |= {"undesirable": len(examples) - stats["desirable"], "kl_final": last("kl"),
                  "reward_margin_final": last("rewards/margins")}
    return stats


def sft_update(base_ref: str, active_dir: Path | None, examples: Sequence[Example], config: BaselineConfig,
               lora: PPOConfig, out_dir: Path) -> dict[str, Any]:
    """Supervised fine-tuning of the policy's LoRA on ``examples`` (replies only carry loss); the
    candidate goes to ``out_dir`` in PPO's layout. Returns stats (examples, steps, losses, train_s)."""
    return _update("sft", base_ref, active_dir, [e for e in examples if e.desirable], config, lora, out_dir)


def kto_update(base_ref: str, active_dir: Path | None, examples: Sequence[Example], config: BaselineConfig,
               lora: PPOConfig, out_dir: Path) -> dict[str, Any]:
    """KTO on the policy's LoRA with ``examples``' thumbs against the base model; the candidate goes to
    ``out_dir`` in PPO's layout. Returns stats (counts, steps, losses, KL estimate, reward margin, train_s)."""
    return _update("kto", base_ref, active_dir, examples, config, lora, out_dir)
