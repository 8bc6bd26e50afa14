"""One training round, several ways, on the same feedback; each candidate then faces the same panel.

A loop run compares methods on different feedback from round 1 on, and one round of 150 customers
moves ±0.25 stars. Here every variant trains on a copy of the same logged round (its own embedded
Redis), and the gate's panel sandbox (``loopdesk simulate --panel``) plays the same customers against
each candidate and against the base. First record a round of traffic on the base model:

    LOOPDESK_DATA_DIR=/tmp/r0 loopdesk loop --rounds 0 --customers-per-round 150 --no-oracle --out /tmp/r0-report
    python bench/round_variants.py /tmp/r0 --out /tmp/variants \\
        --variant 'ppo={"ppo": {"ptx_coef": 0}}' --variant 'ppo-ptx={}' --variant 'sft={"method": "sft"}'

A variant is NAME=JSON of ``RoundConfig`` overrides (nested, as ``loopdesk loop --round-config``);
every variant passes its own gate as ``active`` would. An SFT or KTO variant gets the budget its
config gives PPO (``RoundConfig.baseline_steps``): ``{"method": "sft"}`` matches the default PPO round.
Prints one line per variant as it finishes and a table at the end; ``--out``/results.json keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/feedback_store.py would shadow the feedback_store package
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, overrides = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a variant is NAME=JSON, got {text!r}")
    try:
        data = json.loads(overrides)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name}: its overrides are not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: its overrides must be a JSON object")
    return name.strip(), data


def train_variant(source: Path, work: Path, base_model: str, overrides: dict) -> dict:
    """Copy the logged round to ``work``, run one round there; the run's figures and the candidate's path."""
    from feedback_store import FeedbackStore
    from feedback_store.server import stop_embedded_redis
    from loopdesk.config import load_settings
    from trainer.round_config import RoundConfig
    from trainer.round import run_round

    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("redis.port", "redis.pid", "start.lock"))
    settings = load_settings(data_dir=work, base_model=base_model, redis_url="")
    config = RoundConfig.from_dict({**overrides, "gate": {**overrides.get("gate", {}), "pass_status": "active"}})
    store = FeedbackStore.from_settings(settings, announce=False)
    started = time.monotonic()
    try:
        run = run_round(settings, store, config=config, show_progress=False)
        path = store.adapters.get(run.adapter_version).path
    finally:
        stop_embedded_redis(work)
    m = run.metrics
    update = m.get("ppo_update_s") or (m.get("baseline") or {}).get("update_s")
    return {"status": run.status, "path": path, "round_s": round(time.monotonic() - started),
            "update_s": update, "gate_kl": m.get("gate_candidate_kl"),
            "gate_reference_score": m.get("gate_candidate_reference_score"), "rm_eval_accuracy": m.get("rm_eval_accuracy")}


def panel(work: Path, base_model: str, candidate: str, customers: int, seed: int) -> dict:
    """The gate's panel: the candidate and the base on the same customers; its JSON verdict."""
    from feedback_store.server import stop_embedded_redis

    env = {**os.environ, "LOOPDESK_DATA_DIR": str(work), "LOOPDESK_BASE_MODEL": base_model}
    env.pop("REDIS_URL", None)
    env.pop("LOOPDESK_REDIS_URL", None)
    try:
        done = subprocess.run([sys.executable, "-m", "loopdesk.cli", "simulate", "--panel", "--candidate-dir", candidate,
                               "--active", "base", "--customers", str(customers), "--concurrency", "8",
                               "--seed", str(seed), "--json"], env=env, cwd=ROOT, capture_output=True, text=True)
    finally:
        stop_embedded_redis(work)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the panel failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="a data directory holding one logged round (not in use)")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME=JSON overrides")
    parser.add_argument("--out", type=Path, required=True, help="where each variant's copy and results.json go")
    parser.add_argument("--base-model", default=os.environ.get("LOOPDESK_BASE_MODEL", str(ROOT / "var" / "base-model")))
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()
    if not (args.data_dir / "redis").is_dir():
        parser.error(f"{args.data_dir} holds no embedded Redis data (redis/)")
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    from feedback_store.server import embedded_redis_pid

    if embedded_redis_pid(args.data_dir) is not None:
        parser.error(f"{args.data_dir}'s Redis is running: stop it first (LOOPDESK_DATA_DIR={args.data_dir} loopdesk redis stop)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, overrides in args.variant:
        print(f"{name}: training one round with {json.dumps(overrides)}", flush=True)
        try:
            row = train_variant(args.data_dir, args.out / name, args.base_model, overrides)
        except Exception as exc:  # a variant the feedback cannot train (e.g. NotEnoughFeedback): say so, go on
            results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: failed: {results[name]['error']}", flush=True)
            continue
        verdict = panel(args.out / name, args.base_model, row["path"], args.customers, args.seed)
        details = verdict["details"]
        row |= {"csat": verdict["candidate_score"], "csat_low": details["candidate_stats"]["csat_low"],
                "csat_high": details["candidate_stats"]["csat_high"], "rubric": details["candidate_stats"]["rubric"],
                "base_csat": verdict["active_score"], "base_rubric": details["active_stats"]["rubric"]}
        results[name] = row
        print(f"{name}: {row['status']}, update {row['update_s']} s; panel CSAT {row['csat']:.2f} "
              f"[{row['csat_low']:.2f}, {row['csat_high']:.2f}], rubric {row['rubric']:.2f} "
              f"(base {row['base_csat']:.2f}, rubric {row['base_rubric']:.2f})", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("\n| variant | status | update s | panel CSAT [95% CI] | rubric | base CSAT in its panel |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if r["status"] == "failed":
            print(f"| {name} | failed: {r['error']} | | | | |")
            continue
        print(f"| {name} | {r['status']} | {r['update_s']} | {r['csat']:.2f} [{r['csat_low']:.2f}, {r['csat_high']:.2f}] "
              f"| {r['rubric']:.2f} | {r['base_csat']:.2f} |")


if __name__ == "__main__":
    main()
