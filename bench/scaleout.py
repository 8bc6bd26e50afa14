"""Benchmark: one training round on 1 process against the same round on N processes (``accelerate launch``).

Every run is a real ``loopdesk train`` round under ``accelerate launch`` on the CPU (gloo between
processes), with the same round config, on the same number of logged conversations answered by the
same tiny model (each run its own key prefix on one embedded Redis, its own data directory). Each
process gets ``--threads`` torch threads, so N processes use N times the cores of one: this measures
data-parallel scale-out, as on N GPUs. Measured from the run's record: episodes/s of the PPO update
(logged + rollout episodes over ``ppo_update_s``, model loading included), the reward model's
training time (from the progress stream's timestamps) and the launch's wall time; the load average
is read before and after each run, since other jobs on a shared machine slow the many-process runs
most. Runs alternate the order of process counts over ``--repeats``; printed: every run, then the median
episodes/s of each count and its ratio against the first count (the baseline, 1 by default).

Run:  python bench/scaleout.py [--processes 1 2] [--repeats 2] [--rollout-steps 8] [--base-model DIR]
Base model: the test-size one (``bench/out/base-test``, built in seconds) unless ``--base-model``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/feedback_store.py would shadow the feedback_store package: import from the repository root
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.bot_process import tiny_model  # noqa: E402
from feedback_store import FeedbackStore  # noqa: E402
from feedback_store.connection import resolve_redis_url  # noqa: E402
from feedback_store.server import ensure_embedded_redis, stop_embedded_redis  # noqa: E402
from loopdesk.config import load_settings  # noqa: E402
from tests.trainer_helpers import as_round_file, seed_conversations, small_round_config  # noqa: E402
from trainer.config import PPOConfig  # noqa: E402

OUT = ROOT / "bench" / "out" / "scaleout"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="process counts to run, the first is the baseline")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each process count (order alternates)")
    parser.add_argument("--conversations", type=int, default=48, help="rated conversations seeded for each run")
    parser.add_argument("--rollout-steps", type=int, default=8, help="PPO steps on fresh rollouts")
    parser.add_argument("--logged-steps", type=int, default=2, help="PPO steps on the logged turns")
    parser.add_argument("--batch-size", type=int, default=16, help="episodes per PPO step (all processes together)")
    parser.add_argument("--mini-batch-size", type=int, default=8, help="episodes per gradient update (all together)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="reply length of rollouts and the gate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--base-model", type=Path, default=None, help="base model directory (default: test size)")
    parser.add_argument("--out", type=Path, default=OUT, help="where results.json goes")
    return parser.parse_args()


def round_file(args: argparse.Namespace, path: Path) -> Path:
    """The round every run trains: the tests' small round with this benchmark's PPO sizes."""
    config = small_round_config(rollout_steps=args.rollout_steps, logged_steps=args.logged_steps,
                                ppo=PPOConfig(batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                                              max_new_tokens=args.max_new_tokens))
    path.write_text(json.dumps(as_round_file(config)))
    return path


def launch(processes: int, threads: int, env: dict[str, str], round_config: Path) -> float:
    """``loopdesk train`` on ``processes`` CPU processes of one accelerate launch; returns its wall seconds."""
    command = [sys.executable, "-m", "accelerate.commands.launch", f"--num_processes={processes}",
               "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
               f"--num_cpu_threads_per_process={threads}"]
    command += ["--multi_gpu", "--main_process_port=0"] if processes > 1 else ["--cpu"]
    started = time.monotonic()
    done = subprocess.run([*command, "-m", "loopdesk", "train", "--round-config", str(round_config)], cwd=ROOT,
                          env={**env, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the round on {processes} processes failed:\n{done.stderr[-4000:]}")
    return time.monotonic() - started


def stage_seconds(store: FeedbackStore, run_id: str, stage: str, before: str) -> float:
    """Seconds between the ``before`` event and the ``stage`` event of the run (stream ids are ms times)."""
    at = {event["stage"]: int(event_id.split("-")[0]) for event_id, event in store.runs.progress(run_id)}
    return (at[stage] - at[before]) / 1000


def run_one(processes: int, args: argparse.Namespace, redis_url: str, base_model: Path, work: Path) -> dict:
    """Seed a key prefix of its own, run the round on ``processes`` processes, read its figures."""
    prefix = f"scaleout{processes}-{uuid.uuid4().hex[:6]}"
    settings = load_settings({}, data_dir=work / prefix, key_prefix=prefix, redis_url=redis_url,
                             base_model=str(base_model))
    store = FeedbackStore.from_settings(settings, announce=False)
    seed_conversations(store, base_model, n=args.conversations, max_new_tokens=args.max_new_tokens)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "LOOPDESK_DATA_DIR": str(work / prefix),
           "LOOPDESK_KEY_PREFIX": prefix, "LOOPDESK_BASE_MODEL": str(base_model),
           "LOOPDESK_MAX_REPLY_TOKENS": str(args.max_new_tokens)}
    load_before = os.getloadavg()[0]
    wall = launch(processes, args.threads, env, round_file(args, work / f"{prefix}.json"))
    (run,) = store.runs.list()
    steps = [e for _, e in store.runs.progress(run.id) if e["stage"] in ("ppo_logged", "ppo_rollout")]
    episodes = sum(e.get("episodes", 0.0) for e in steps)
    result = {"processes": processes, "status": run.status, "wall_s": round(wall, 2),
              "reward_model_s": stage_seconds(store, run.id, "reward_model", "rewards"),
              "ppo_update_s": run.metrics["ppo_update_s"], "episodes": int(episodes),
              "episodes_per_s": round(episodes / run.metrics["ppo_update_s"], 2),
              "per_process": run.metrics["processes"], "load_before": round(load_before, 2),
              "load_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    args = parse_args()
    base_model = args.base_model or tiny_model()
    work = Path(tempfile.mkdtemp(prefix="loopdesk-scaleout-"))
    try:
        ensure_embedded_redis(work / "redis-data")
        redis_url = resolve_redis_url(load_settings({}, data_dir=work / "redis-data"), announce=False)
        order = [counts for repeat in range(args.repeats)
                 for counts in (args.processes if repeat % 2 == 0 else args.processes[::-1])]
        results = [run_one(n, args, redis_url, base_model, work) for n in order]
    finally:
        stop_embedded_redis(work / "redis-data")
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nloopdesk train on N CPU processes ({args.threads} torch thread(s) each), {os.cpu_count()} cores; "
          f"{args.rollout_steps} rollout + {args.logged_steps} logged PPO steps of {args.batch_size} episodes\n")
    print("| processes | episodes | PPO update s | episodes/s | reward model s | round wall s | load avg before → after |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(f"| {r['processes']} | {r['episodes']} | {r['ppo_update_s']} | {r['episodes_per_s']} "
              f"| {r['reward_model_s']:.1f} | {r['wall_s']:.1f} | {r['load_before']} → {r['load_after']} |")
    median = {n: statistics.median(r["episodes_per_s"] for r in results if r["processes"] == n) for n in args.processes}
    baseline = args.processes[0]
    print()
    for n in args.processes:
        print(f"{n} process(es): median {median[n]:.2f} episodes/s of the PPO update, "
              f"×{median[n] / median[baseline]:.2f} against {baseline}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=2))


if __name__ == "__main__":
    main()
