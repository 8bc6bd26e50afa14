"""Contender: TRL 1.12's PPO (``trl.experimental.ppo.PPOTrainer``, its last release with PPO).

Runs in the benchmark's own virtualenv (``bench/.venv-trl112``), started by ``bench/ppo.py``:
    bench/.venv-trl112/bin/python -m bench.ppo_contenders.trl_ppo TASK.json RESULT.json
TRL's PPO takes the policy, a reference (None: with a LoRA ``peft_config`` the reference is the
policy with its adapter disabled), the reward model and a value model: a sequence-classification
copy of the same tiny base model, trained in full, as TRL's PPO documentation sets it up.
"""

from __future__ import annotations

import sys
import tempfile

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl.experimental.ppo import PPOConfig, PPOTrainer

from bench.ppo_contenders.shared import Clock, finish, load_task, load_tokenizer, rss_mib


def main(task_path: str, out_path: str) -> None:
    task = load_task(task_path)
    tokens = task["tokens"]
    tokenizer = load_tokenizer(task)
    reward_model = AutoModelForSequenceClassification.from_pretrained(task["reward_dir"]).eval()
    policy = AutoModelForCausalLM.from_pretrained(task["base_dir"])
    value_model = AutoModelForSequenceClassification.from_pretrained(task["base_dir"], num_labels=1)
    steps = task["episodes"] // task["batch_size"]
    with tempfile.TemporaryDirectory(prefix="trl-ppo-") as output_dir:
        args = PPOConfig(
            output_dir=output_dir, per_device_train_batch_size=task["batch_size"],
            gradient_accumulation_steps=1, num_mini_batches=task["batch_size"] // task["mini_batch_size"],
            num_ppo_epochs=1, total_episodes=steps * task["batch_size"],
            local_rollout_forward_batch_size=task["batch_size"], response_length=task["max_new_tokens"],
            temperature=task["temperature"], stop_token="eos", missing_eos_penalty=1.0,
            learning_rate=task["learning_rate"], lr_scheduler_type="constant", kl_coef=task["kl_coef"],
            seed=task["seed"], num_sample_generations=0, report_to="none", save_strategy="no",
            logging_steps=10**6, disable_tqdm=True, use_cpu=True, bf16=False,
        )
        peft_config = LoraConfig(r=task["lora_r"], lora_alpha=task["lora_alpha"], lora_dropout=0.0,
                                 target_modules=task["lora_targets"], task_type="CAUSAL_LM")
        prompts = Dataset.from_dict({"input_ids": task["train_prompts"]})
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                             reward_model=reward_model, train_dataset=prompts, value_model=value_model,
                             eval_dataset=prompts.select(range(task["batch_size"])), peft_config=peft_config)
        setup_rss = rss_mib()
        with Clock() as clock:
            trainer.train()
        lm = trainer.accelerator.unwrap_model(trainer.model).policy
        objective = [e["objective/scores"] for e in trainer.state.log_history if "objective/scores" in e]
        finish(out_path, task, tokens, lm, reward_model, setup_rss, clock, steps * task["batch_size"],
               train_objective=objective)


if __name__ == "__main__":
    main(*sys.argv[1:3])
