"""Benchmark: does a base model answer from the passage in its context? (``sim/probe.py``)

Samples replies at the serving temperature to grounded prompts, over several seeds, and prints
each figure's mean and range next to the owners' model-side target; the ratio column is the
figure against its target (>= 1 meets it; for the "at most" targets, target / figure).

    held-out phrasings on the right article >= 0.85, all key facts >= 0.75, wrong facts <= 0.03;
    edited fact: new value >= 0.90, old value <= 0.02; new topic: its facts >= 0.80;
    out-of-scope questions declined >= 0.90, invented promises 0.

Run:  python bench/base_probe.py <model dir> [--seeds 0 1 2] [--per-intent 24]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# bench/feedback_store.py shares the package's name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402

from sim.probe import as_dict, base_probe  # noqa: E402

TARGETS = [("held_out", "on_article", ">=", 0.85), ("held_out", "all_facts", ">=", 0.75),
           ("held_out", "wrong_facts", "<=", 0.03), ("seen", "on_article", None, None),
           ("seen", "all_facts", None, None), ("seen", "wrong_facts", None, None), ("held_out", "eos", None, None),
           ("edited", "new_value", ">=", 0.90), ("edited", "old_value", "<=", 0.02),
           ("new_topic", "states_fact", ">=", 0.80), ("out_of_scope", "declined", ">=", 0.90),
           ("out_of_scope", "promises", "<=", 0.0), ("out_of_scope", "no_passage", None, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a bootstrapped base model directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-intent", type=int, default=24, help="replies per intent (and per edit) per seed")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    runs = [as_dict(base_probe(model, tokenizer, args.per_intent, seed)) for seed in args.seeds]
    print(f"grounded probe of {args.model}: seeds {args.seeds}, {args.per_intent} replies per intent and seed")
    print(f"{'probe':<14}{'figure':<13}{'mean':>7}{'min':>7}{'max':>7}   target   ratio      n")
    for probe, figure, sense, target in TARGETS:
        values = np.array([run[probe][figure] for run in runs])
        n = sum(run[probe]["n"] for run in runs)
        mean = values.mean()
        if sense is None:
            goal = ratio = ""
        else:
            goal = f"{sense} {target:.2f}"
            ratio = f"{mean / target:.2f}" if sense == ">=" else (f"{target / mean:.2f}" if mean else "inf")
        print(f"{probe:<14}{figure:<13}{mean:7.3f}{values.min():7.3f}{values.max():7.3f}   {goal:<8}{ratio:>6}{n:>7}")


if __name__ == "__main__":
    main()
