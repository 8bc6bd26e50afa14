"""Contender: loopdesk's LoRA PPO (``trainer.ppo``) on the benchmark task.

Run by ``bench/ppo.py``:  python -m bench.ppo_contenders.loopdesk_ppo TASK.json RESULT.json
"""

from __future__ import annotations

import random
import sys

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from bench.ppo_contenders.shared import Clock, finish, load_task, reward_scores, rss_mib
from trainer.config import PPOConfig
from trainer.policy import PolicyWithValueHead
from trainer.ppo import PPOTrainer


def main(task_path: str, out_path: str) -> None:
    task = load_task(task_path)
    tokens = task["tokens"]
    reward_model = AutoModelForSequenceClassification.from_pretrained(task["reward_dir"]).eval()
    config = PPOConfig(
        lora_r=task["lora_r"], lora_alpha=task["lora_alpha"], lora_target_modules=task["lora_targets"],
        learning_rate=task["learning_rate"], batch_size=task["batch_size"],
        mini_batch_size=task["mini_batch_size"], ppo_epochs=1, max_new_tokens=task["max_new_tokens"],
        temperature=task["temperature"], init_kl_coef=task["kl_coef"], seed=task["seed"],
    )
    base = AutoModelForCausalLM.from_pretrained(task["base_dir"])
    trainer = PPOTrainer(PolicyWithValueHead.with_new_adapter(base, config), config,
                         eos_token_id=tokens["eos"], pad_token_id=tokens["pad"])

    def reward_fn(pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        return reward_scores(reward_model, [prompt + reply for prompt, reply in pairs], tokens["pad"])

    pool, rng = list(task["train_prompts"]), random.Random(task["seed"])
    steps = task["episodes"] // task["batch_size"]
    setup_rss = rss_mib()
    with Clock() as clock:
        queue: list[list[int]] = []
        objective = []  # per step: mean reward-model score less the missing-EOS penalty, as TRL logs it
        for _ in range(steps):
            while len(queue) < config.batch_size:  # epochs over the shuffled pool, like a data loader
                rng.shuffle(pool)
                queue += pool
            prompts, queue = queue[: config.batch_size], queue[config.batch_size:]
            stats = trainer.step_on_prompts(prompts, reward_fn)
            objective.append(stats["reward_mean"] - config.missing_eos_penalty * (1.0 - stats["eos_share"]))
    finish(out_path, task, tokens, trainer.unwrapped.lm, reward_model, setup_rss, clock,
           steps * config.batch_size, final_kl_coef=trainer.kl_ctl.value, train_objective=objective)


if __name__ == "__main__":
    main(*sys.argv[1:3])
