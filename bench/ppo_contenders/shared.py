"""What every PPO-benchmark contender shares: the task file, reward scoring, evaluation, memory.

Imported by contenders in two environments (the main one and the TRL 1.12 virtualenv), so it
needs only torch and transformers. The task file (JSON, written by ``bench/ppo.py``) holds
the model and reward-model paths, prompt token ids and the hyper-parameters all contenders use.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging


def quiet_transformers() -> None:
    """No weight-loading progress bars or load reports in the benchmark's output."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_task(path: str) -> dict[str, Any]:
    """The task file; torch limited to its thread count and seeded with its seed (before any LoRA init)."""
    quiet_transformers()
    task = json.loads(Path(path).read_text(encoding="utf-8"))
    torch.set_num_threads(task["threads"])
    torch.manual_seed(task["seed"])
    return task


def load_tokenizer(task: dict[str, Any]) -> Any:
    """The base model's tokenizer, left-padding with the task's pad token (``bench/ppo.py``'s ``padding_token``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(task["base_dir"], padding_side="left")
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(task["tokens"]["pad"])
    return tokenizer


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (reported in kB), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB: the high-water mark of its own memory (VmHWM).

    Not ``getrusage``'s ru_maxrss: Linux carries that over fork and exec, so a contender started
    by a benchmark that had a model loaded would report at least the benchmark's own peak.
    """
    return _status_mib("VmHWM")


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids left-padded to one width, and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def last_hidden(classifier: Any, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Final hidden state [N, H] of a sequence classifier's backbone at each sequence's last token.

    Positions count real tokens only, as in TRL's ``get_reward``.
    """
    backbone = getattr(classifier, classifier.base_model_prefix)
    states = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = left_pad(sequences[start:start + batch_size], pad_id)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        states.append(out.last_hidden_state[:, -1])
    return torch.cat(states)


@torch.no_grad()
def reward_scores(reward_model: Any, sequences: list[list[int]], pad_id: int) -> list[float]:
    """The reward model's score of each prompt+reply sequence, read at its last token.

    The same computation as TRL's ``get_reward`` (backbone, last hidden state, ``score`` head),
    so every contender, TRL's PPO included, is rewarded identically.
    """
    return reward_model.score(last_hidden(reward_model, sequences, pad_id)).squeeze(-1).float().tolist()


def cut_at_eos(reply: list[int], eos_id: int) -> list[int]:
    """The reply up to and including its first EOS (all of it when there is none)."""
    return reply[: reply.index(eos_id) + 1] if eos_id in reply else reply


@torch.no_grad()
def evaluate(lm: Any, reward_model: Any, task: dict[str, Any], tokens: dict[str, int]) -> dict[str, Any]:
    """Reward, EOS share and length of ``eval_samples`` replies to each of the task's evaluation prompts.

    Sample k of every prompt is drawn with seed ``eval_seed + k`` at the task's temperature, plain
    multinomial (no top-k/top-p), so every policy is compared on the same prompts under the same
    random streams. ``eval_scores[i]`` holds prompt i's rewards, one per sample: ``bench/ppo.py``
    pairs them by prompt across policies. Runs on ``eval_threads`` torch threads (it is not timed).
    """
    was_training, threads = lm.training, torch.get_num_threads()
    lm.eval()
    torch.set_num_threads(task.get("eval_threads", threads))
    prompts, pad_id, eos_id = task["eval_prompts"], tokens["pad"], tokens["eos"]
    per_prompt: list[list[float]] = [[] for _ in prompts]
    ended, lengths = [], []
    for sample in range(task.get("eval_samples", 1)):
        torch.manual_seed(task["eval_seed"] + sample)
        for start in range(0, len(prompts), task["batch_size"]):
            chunk = prompts[start:start + task["batch_size"]]
            ids, mask = left_pad(chunk, pad_id)
            out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=task["temperature"],
                              top_k=0, top_p=1.0, max_new_tokens=task["max_new_tokens"], eos_token_id=eos_id,
                              pad_token_id=pad_id)
            sequences = []
            for prompt, reply in zip(chunk, out[:, ids.shape[1]:].tolist()):
                reply = cut_at_eos(reply, eos_id)
                sequences.append(prompt + reply)
                ended.append(reply[-1] == eos_id)
                lengths.append(len(reply))
            for offset, score in enumerate(reward_scores(reward_model, sequences, pad_id)):
                per_prompt[start + offset].append(score)
    torch.set_num_threads(threads)
    lm.train(was_training)
    scores = [score for row in per_prompt for score in row]
    return {
        "eval_reward": sum(scores) / len(scores),
        "eval_eos_share": sum(ended) / len(ended),
        "eval_reply_length": sum(lengths) / len(lengths),
        "eval_scores": per_prompt,
    }


class Clock:
    """Wall and CPU time of the training loop only (model loading and evaluation excluded).

    CPU time (all threads of this process) is less disturbed than wall time by other jobs on
    a shared machine, so both are reported.
    """

    def __enter__(self) -> "Clock":
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started


def finish(out_path: str, task: dict[str, Any], tokens: dict[str, int], lm: Any, reward_model: Any,
           setup_rss: float, clock: Clock, episodes: int, **extra: Any) -> None:
    """Record the peak RSS (before evaluating), evaluate the trained policy, write the result JSON."""
    result = {
        "episodes": episodes,
        "train_seconds": clock.seconds,
        "train_cpu_seconds": clock.cpu_seconds,
        "episodes_per_s": episodes / clock.seconds,
        "episodes_per_cpu_s": episodes / clock.cpu_seconds,
        "setup_rss_mib": setup_rss,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }
    result |= evaluate(lm, reward_model, task, tokens) | extra
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result), file=sys.stderr)
