"""Benchmark: loopdesk's LoRA PPO against TRL 1.12's PPO and TRL 1.16's RLOO on one task.

Every contender trains a rank-r LoRA on the same tiny base model, rewarded by the same reward
model (``bench/ppo_contenders/reward_probe.py``), on the same prompts (the demo company's training
phrasings in the chat template), with the same batch, minibatch, reply length, learning rate,
KL coefficient, temperature and torch thread count, for the same number of episodes (sampled
replies). Each run is its own process; contenders alternate order across repeats. Measured:
episodes/s of the training loop (wall, and per CPU-second, which other jobs on a shared machine
disturb less), peak RSS (the process's VmHWM, read right after training), and the reward the
trained policy reaches on the prompts (same sampling seed, same scorer). Printed as ratios
loopdesk / contender.

Run:  python bench/ppo.py [--episodes 384] [--repeats 3] [--contenders loopdesk,trl-ppo,trl-rloo]
TRL 1.12 lives in its own virtualenv (created once; see bench/README.md):
    python -m venv bench/.venv-trl112 && bench/.venv-trl112/bin/pip install torch==2.13.0 \\
        && bench/.venv-trl112/bin/pip install trl==1.12.0 peft==0.21.2
Base model: var/base-model when it holds a built model, else the test size built once into
bench/out/ppo/base-test (about 2 minutes the first time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds scripts named like the packages they measure: import from the repository root.
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from bench.ppo_contenders.reward_probe import build_reward_model  # noqa: E402
from bench.ppo_contenders.shared import evaluate, quiet_transformers  # noqa: E402
from sim.bootstrap import MANIFEST, build_base_model  # noqa: E402
from sim.company import load_company  # noqa: E402

OUT = ROOT / "bench" / "out" / "ppo"
VENV_PYTHON = ROOT / "bench" / ".venv-trl112" / "bin" / "python"
CONTENDERS = {  # name → (module, interpreter)
    "loopdesk": ("bench.ppo_contenders.loopdesk_ppo", Path(sys.executable)),
    "trl-ppo": ("bench.ppo_contenders.trl_ppo", VENV_PYTHON),
    "trl-rloo": ("bench.ppo_contenders.trl_rloo", Path(sys.executable)),
}
LABELS = {"loopdesk": "loopdesk PPO", "trl-ppo": "TRL 1.12 PPO", "trl-rloo": "TRL 1.16 RLOO"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=384, help="sampled replies each contender trains on")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (order alternates)")
    parser.add_argument("--contenders", default="loopdesk,trl-ppo,trl-rloo",
                        help=f"comma-separated subset of {','.join(CONTENDERS)}; loopdesk is the numerator")
    parser.add_argument("--batch-size", type=int, default=32, help="episodes per PPO step / RLOO generation batch")
    parser.add_argument("--mini-batch-size", type=int, default=8, help="episodes per optimizer step")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest sampled reply")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="KL coefficient (loopdesk: initial, adaptive)")
    parser.add_argument("--lora-r", type=int, default=4)
    parser.add_argument("--rloo-generations", type=int, default=4, help="RLOO replies per prompt")
    parser.add_argument("--eval-prompts", type=int, default=128,
                        help="prompts (evenly spaced over the training phrasings) the trained policies answer")
    parser.add_argument("--eval-samples", type=int, default=2,
                        help="replies sampled per evaluation prompt (sample k with seed 1234 + k)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every contender")
    parser.add_argument("--eval-threads", type=int, default=2, help="torch threads of the (untimed) evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of repeat 0 (repeat k uses seed + k)")
    parser.add_argument("--base-model", type=Path, default=None,
                        help="base model dir (default: var/base-model if built, else a cached test-size build)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a contender run is killed")
    parser.add_argument("--probe-dialogues", type=int, default=600, help="demo chats the reward probe is fitted on")
    return parser.parse_args()


def resolve_base_model(explicit: Path | None) -> Path:
    """The base model to benchmark on, building the test size (once, cached) when none exists."""
    if explicit is not None:
        return explicit
    for candidate in (ROOT / "var" / "base-model", OUT / "base-test"):
        if (candidate / MANIFEST).exists():
            return candidate
    print("no base model in var/base-model: building the test size into bench/out/ppo/base-test ...")
    return build_base_model(OUT / "base-test", size="test", progress=False)


def write_task(args: argparse.Namespace, base_dir: Path, reward_dir: Path, seed: int) -> Path:
    """The task file every contender reads: paths, prompt token ids and shared hyper-parameters."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    company = load_company()
    system = {"role": "system", "content": company.shop.system_prompt}
    texts = [tokenizer.apply_chat_template([system, {"role": "user", "content": phrasing}],
                                           add_generation_prompt=True, tokenize=False)
             for intent in company.intents for phrasing in intent.phrasings]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    n_eval = min(args.eval_prompts, len(ids))
    pad = padding_token(tokenizer, ids)
    task = {
        "base_dir": str(base_dir), "reward_dir": str(reward_dir), "train_prompt_texts": texts,
        "train_prompts": ids, "eval_prompts": [ids[i * len(ids) // n_eval] for i in range(n_eval)], "eval_seed": 1234,
        "eval_samples": args.eval_samples, "eval_threads": args.eval_threads,
        "tokens": {"pad": pad, "eos": tokenizer.eos_token_id},
        "episodes": args.episodes, "batch_size": args.batch_size, "mini_batch_size": args.mini_batch_size,
        "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef, "lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r,
        "lora_targets": ["q_proj", "v_proj"], "rloo_generations": args.rloo_generations,
        "threads": args.threads, "seed": seed,
    }
    path = OUT / f"task-seed{seed}.json"
    path.write_text(json.dumps(task), encoding="utf-8")
    return path


def padding_token(tokenizer, prompts: list[list[int]]) -> int:
    """The pad token every contender pads with: the tokenizer's, unless it is EOS (SmolLM2) or a prompt holds
    it, then another special token no prompt holds. TRL's PPO finds padding by token id (the attention mask is
    ``ids != pad``, a reply ends at its first pad), so a pad equal to EOS would mask the prompts' ``<|im_end|>``
    tokens and every reply's EOS; TRL's examples add a pad token of its own in that case."""
    used = {t for prompt in prompts for t in prompt} | {tokenizer.eos_token_id}
    candidates = [tokenizer.pad_token_id, *tokenizer.all_special_ids]
    pad = next((t for t in candidates if t is not None and t not in used), None)
    if pad is None:
        raise SystemExit("the tokenizer has no special token that could pad without being taken for a real one")
    return pad


def base_evaluation(task_path: Path) -> dict:
    """The evaluation of the base model itself (no adapter): the starting point."""
    task = json.loads(task_path.read_text(encoding="utf-8"))
    torch.set_num_threads(task["threads"])
    lm = AutoModelForCausalLM.from_pretrained(task["base_dir"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(task["reward_dir"]).eval()
    return evaluate(lm, reward_model, task, task["tokens"])


def run_contender(name: str, task_path: Path, run: int, timeout: float) -> dict:
    """One contender, one run, in its own process; returns its result JSON."""
    module, python = CONTENDERS[name]
    result_path, log_path = OUT / f"{name}-{run}.json", OUT / f"{name}-{run}.log"
    result_path.unlink(missing_ok=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.run([str(python), "-m", module, str(task_path), str(result_path)], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{name} run {run} failed (exit {proc.returncode}); see {log_path}:\n" + "\n".join(tail))
    result = json.loads(result_path.read_text())
    print(f"  {LABELS[name]:<14} run {run}: {result['episodes_per_s']:6.2f} episodes/s, "
          f"peak {result['peak_rss_mib']:6.0f} MiB, eval reward {result['eval_reward']:+.3f} "
          f"({time.monotonic() - started:.0f} s with start-up and evaluation)", flush=True)
    return result


def prompt_means(evaluations: list[dict]) -> list[float]:
    """Each evaluation prompt's mean reward over the given evaluations (runs) and their samples."""
    rows = zip(*(e["eval_scores"] for e in evaluations))
    return [statistics.fmean(score for per_run in row for score in per_run) for row in rows]


def paired_difference(ours: list[dict], theirs: list[dict]) -> tuple[float, float, float]:
    """Mean reward difference ours − theirs, paired by evaluation prompt, with its 95% interval.

    The interval (normal, over prompts) covers the sampling of the evaluation replies and the choice
    of prompts, not the spread between training seeds: the runs' own gains show that.
    """
    diffs = [a - b for a, b in zip(prompt_means(ours), prompt_means(theirs), strict=True)]
    mean = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return mean, mean - half, mean + half


def interval(diff: tuple[float, float, float]) -> str:
    return f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]"


def summarise(results: dict[str, list[dict]], base: dict) -> None:
    """Table of medians over runs (rewards: means, gains paired by prompt) and the ratios loopdesk / each contender.

    Speed and memory ratios are paired: taken per run between neighbouring runs of the same
    repeat (similar load on a shared machine), then the median over repeats.
    """
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    def mean(name: str, key: str) -> float:
        return statistics.fmean(r[key] for r in results[name])

    def ratios(name: str, key: str) -> list[float]:
        return [ours[key] / theirs[key] for ours, theirs in zip(results["loopdesk"], results[name])]

    replies = sum(len(row) for row in base["eval_scores"])
    print(f"\nbase model eval reward: {base['eval_reward']:+.3f} (no adapter; {len(base['eval_scores'])} prompts, "
          f"{replies} replies, the same sampling seeds as every contender)")
    print(f"{'contender':<15}{'episodes/s':>11}{'per CPU-s':>10}{'peak RSS MiB':>13}{'setup RSS':>10}"
          f"{'eval reward':>12}{'gain [95% interval]':>27}{'EOS share':>10}{'reply len':>10}")
    for name in results:
        print(f"{LABELS[name]:<15}{med(name, 'episodes_per_s'):>11.2f}{med(name, 'episodes_per_cpu_s'):>10.2f}"
              f"{med(name, 'peak_rss_mib'):>13.0f}{med(name, 'setup_rss_mib'):>10.0f}"
              f"{mean(name, 'eval_reward'):>+12.3f}{interval(paired_difference(results[name], [base])):>27}"
              f"{mean(name, 'eval_eos_share'):>10.2f}{mean(name, 'eval_reply_length'):>10.1f}")
    print("\ngain over the base per run, and the training objective (reward less the missing-EOS penalty) "
          "of the first and last step, per run:")
    for name in results:
        gains = ", ".join(interval(paired_difference([r], [base])) for r in results[name])
        curves = ", ".join(f"{r['train_objective'][0]:+.2f} → {r['train_objective'][-1]:+.2f}"
                           for r in results[name] if r.get("train_objective"))
        print(f"  {LABELS[name]:<14} gains {gains}" + (f"; objective {curves}" if curves else ""))
    if "loopdesk" not in results:
        return
    print()
    for name in (n for n in results if n != "loopdesk"):
        speed, cpu_speed = ratios(name, "episodes_per_s"), ratios(name, "episodes_per_cpu_s")
        memory = statistics.median(ratios(name, "peak_rss_mib"))
        difference = paired_difference(results["loopdesk"], results[name])
        print(f"loopdesk / {LABELS[name]}: episodes/s ×{statistics.median(speed):.2f} "
              f"(runs: {', '.join(f'{r:.2f}' for r in speed)}), per CPU-second ×{statistics.median(cpu_speed):.2f}, "
              f"peak RSS ×{memory:.2f}, eval reward {mean('loopdesk', 'eval_reward'):+.3f} vs "
              f"{mean(name, 'eval_reward'):+.3f} (loopdesk − {LABELS[name]}, paired by prompt: {interval(difference)})")
        if name == "trl-ppo":
            reward = "ahead" if difference[1] > 0 else "behind" if difference[2] < 0 else "level within the interval"
            met = statistics.median(speed) >= 1.5 and difference[0] >= 0 and memory <= 1.0
            print(f"  target vs TRL PPO (≥1.5× episodes/s, reward ≥, peak RSS ≤): {'met' if met else 'NOT met'}"
                  f" (reward {reward})")


def main() -> None:
    args = parse_args()
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        sys.exit(f"unknown contenders {sorted(unknown)}; choose from {sorted(CONTENDERS)}")
    if "trl-ppo" in names and not VENV_PYTHON.exists():
        sys.exit(f"{VENV_PYTHON} is missing: create the TRL 1.12 virtualenv (see this script's --help)")
    if args.episodes < args.batch_size or args.batch_size % args.mini_batch_size \
            or args.batch_size % args.rloo_generations:
        sys.exit("need episodes ≥ batch size, and batch size divisible by the minibatch size and RLOO generations")
    OUT.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    torch.set_num_threads(args.threads)
    base_dir = resolve_base_model(args.base_model)
    reward_dir = OUT / "reward-model"
    probe = build_reward_model(base_dir, reward_dir, n_dialogues=args.probe_dialogues)
    print(f"base model {base_dir}; reward model: probe, held-out pairwise accuracy "
          f"{probe['probe_pairwise_accuracy']:.2f}; {args.episodes} episodes × {args.repeats} runs each; "
          f"{len(load_company().intents)} intents")
    results: dict[str, list[dict]] = {name: [] for name in names}
    base = None
    for run in range(args.repeats):
        task_path = write_task(args, base_dir, reward_dir, args.seed + run)
        base = base_evaluation(task_path) if base is None else base
        for name in names if run % 2 == 0 else names[::-1]:
            results[name].append(run_contender(name, task_path, run, args.timeout))
    summarise(results, base)


if __name__ == "__main__":
    main()
