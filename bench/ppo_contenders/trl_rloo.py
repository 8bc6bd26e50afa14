"""Contender: TRL 1.16's ``RLOOTrainer`` (the main environment's TRL) on the benchmark task.

Run by ``bench/ppo.py``:  python -m bench.ppo_contenders.trl_rloo TASK.json RESULT.json
Each generation batch holds ``batch_size`` replies: ``batch_size / rloo_generations`` prompts with
``rloo_generations`` replies each (RLOO's baseline is the other replies to the same prompt), then
``batch_size / mini_batch_size`` optimizer steps on it, like PPO's minibatches.
"""

from __future__ import annotations

import sys
import tempfile

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import RLOOConfig, RLOOTrainer

from bench.ppo_contenders.shared import (
    Clock,
    cut_at_eos,
    finish,
    load_task,
    load_tokenizer,
    reward_scores,
    rss_mib,
)


def main(task_path: str, out_path: str) -> None:
    task = load_task(task_path)
    tokens = task["tokens"]
    tokenizer = load_tokenizer(task)
    reward_model = AutoModelForSequenceClassification.from_pretrained(task["reward_dir"]).eval()
    policy = AutoModelForCausalLM.from_pretrained(task["base_dir"])
    ids_of = dict(zip(task["train_prompt_texts"], task["train_prompts"]))

    def shared_reward(prompts: list[str], completion_ids: list[list[int]], **_: object) -> list[float]:
        sequences = [ids_of[p] + cut_at_eos(list(c), tokens["eos"]) for p, c in zip(prompts, completion_ids)]
        return reward_scores(reward_model, sequences, tokens["pad"])

    steps = task["episodes"] // task["batch_size"]
    with tempfile.TemporaryDirectory(prefix="trl-rloo-") as output_dir:
        args = RLOOConfig(
            output_dir=output_dir, per_device_train_batch_size=task["mini_batch_size"],
            gradient_accumulation_steps=1, steps_per_generation=task["batch_size"] // task["mini_batch_size"],
            num_generations=task["rloo_generations"], num_iterations=1,
            max_completion_length=task["max_new_tokens"], temperature=task["temperature"], top_k=0, top_p=1.0,
            learning_rate=task["learning_rate"], lr_scheduler_type="constant", beta=task["kl_coef"],
            max_steps=steps * task["batch_size"] // task["mini_batch_size"], seed=task["seed"],
            report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, use_cpu=True,
            bf16=False,
        )
        peft_config = LoraConfig(r=task["lora_r"], lora_alpha=task["lora_alpha"], lora_dropout=0.0,
                                 target_modules=task["lora_targets"], task_type="CAUSAL_LM")
        trainer = RLOOTrainer(model=policy, reward_funcs=shared_reward, args=args,
                              train_dataset=Dataset.from_dict({"prompt": task["train_prompt_texts"]}),
                              processing_class=tokenizer, peft_config=peft_config)
        setup_rss = rss_mib()
        with Clock() as clock:
            trainer.train()
        lm = trainer.accelerator.unwrap_model(trainer.model)
        finish(out_path, task, tokens, lm, reward_model, setup_rss, clock, steps * task["batch_size"])


if __name__ == "__main__":
    main(*sys.argv[1:3])
