"""The gate again, on a logged run's candidate, with its own reward model and different held-out sets.

A loop's gate decides once, on one draw of replies. This replays ``trainer.gate.evaluate`` for a
finished run of a (stopped) loop data directory: the run's candidate against an adapter version,
scored by the reward model the run trained (``runs/<run>/reward_model``) with the run's reference
weight and gate config, on three held-out sets:

- ``round``: the run's own held-out conversations (the gate before ``RoundConfig.gate_history``);
- ``history``: every round's held-out conversations up to the run's watermark (the gate now);
- ``all``: every held-out conversation logged so far, later rounds included (more contexts than the
  gate had then; for how the verdict moves with the count only).

Each set is tried with up to 64 and up to 128 contexts, newest first. Prints one JSON line each:
the contexts used, the paired test's p-value, both reward-model scores, both expert-view scores and
the verdict. Compare with a panel (``loopdesk simulate --panel``) of the same two adapters:

    python bench/regate.py /tmp/loop-data r00002 v0002 v0001
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/feedback_store.py would shadow the feedback_store package
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

CAPS = (64, 128)


def held_out_sets(store, run, share: float) -> dict[str, list]:
    """The three held-out sets of bot turns (module docstring) of ``run``."""
    from trainer.round import held_out, never_trained

    turns, _ = store.feedback.export(after=run.watermark_from, until=run.watermark_to, limit=100_000)
    history, _ = store.feedback.export(after=0, until=run.watermark_to, limit=100_000)
    everything, _ = store.feedback.export(after=0, limit=100_000)
    own = held_out({t.conversation_id for t in turns}, share)
    return {name: never_trained(part, own, share)
            for name, part in (("round", turns), ("history", history), ("all", everything))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="a loop's data directory (its Redis not running)")
    parser.add_argument("run_id", help="the finished run whose reward model and config to use, e.g. r00002")
    parser.add_argument("candidate", help="the adapter version to judge, e.g. v0002")
    parser.add_argument("active", help="the adapter version it must beat, e.g. v0001")
    parser.add_argument("--base-model", default=os.environ.get("LOOPDESK_BASE_MODEL", str(ROOT / "var" / "base-model")))
    args = parser.parse_args()

    import torch

    from feedback_store import FeedbackStore
    from feedback_store.server import embedded_redis_pid, stop_embedded_redis
    from loopdesk.adapter_format import InvalidAdapterError, verify
    from loopdesk.config import load_settings
    from trainer import gate
    from trainer.round_config import RoundConfig
    from trainer.references import ExpertReferences
    from trainer.reward_model import RewardModel
    from trainer.round import newest_contexts

    if embedded_redis_pid(args.data_dir) is not None:
        parser.error(f"{args.data_dir}'s Redis is running: stop it first (LOOPDESK_DATA_DIR={args.data_dir} loopdesk redis stop)")
    rm_dir = args.data_dir / "runs" / args.run_id / "reward_model"
    adapters = {v: args.data_dir / "adapters" / v for v in (args.candidate, args.active)}
    missing = [str(p) for p in (rm_dir, *adapters.values()) if not p.is_dir()]
    if missing:
        parser.error(f"not found: {', '.join(missing)}")
    settings = load_settings(data_dir=args.data_dir, base_model=args.base_model, redis_url="")
    store = FeedbackStore.from_settings(settings, announce=False)
    try:
        run = store.runs.get(args.run_id)
        if run.watermark_to is None:
            parser.error(f"run {args.run_id} has not finished ({run.status})")
        try:
            for version, path in adapters.items():
                verify(path, settings.base_model_ref, version=version,
                       expected_sha256=store.adapters.get(version).sha256)
        except InvalidAdapterError as exc:
            parser.error(str(exc))
        reward_model = RewardModel.load(settings.base_model_ref, rm_dir)
        sets = held_out_sets(store, run, RoundConfig.from_dict(run.config).holdout_share)
        for name, turns in sets.items():
            prompts = newest_contexts(turns)
            references = ExpertReferences.from_turns(turns, reward_model.tokenizer)
            for cap in CAPS:
                if cap > CAPS[0] and len(prompts) <= CAPS[0]:
                    continue  # the same contexts as the smaller cap
                config = RoundConfig.from_dict({**run.config, "gate": {**run.config.get("gate", {}), "contexts": cap}})
                config = config.serving(settings.temperature, settings.max_reply_tokens)
                torch.manual_seed(config.gate.seed)
                started = time.monotonic()
                verdict = gate.evaluate(settings.base_model_ref, adapters[args.candidate], adapters[args.active],
                                        args.active, prompts, reward_model, config.gate, references,
                                        config.reference_weight)
                c, a = verdict.candidate, verdict.active
                print(json.dumps({"set": name, "cap": cap, "available": len(prompts), "contexts": verdict.contexts,
                                  "passed": verdict.passed, "p": round(verdict.p_value, 4),
                                  "rm_score": [round(c.rm_score, 3), round(a.rm_score, 3)],
                                  "expert_view": [c.reference_score, a.reference_score],
                                  "expert_replies": c.reference_replies, "checks": verdict.checks,
                                  "seconds": round(time.monotonic() - started)}), flush=True)
    finally:
        stop_embedded_redis(args.data_dir)


if __name__ == "__main__":
    main()
