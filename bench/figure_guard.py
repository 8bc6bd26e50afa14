"""Benchmark: what the figure guard costs serving. Baseline: the same engine with the guard off.

Runs two in-process engines on one model (no HTTP), one with ``figure_guard`` on (the default) and one
with it off, and sends each the same load back to back, round after round (so both see the same machine):
C customers, each asking R of the demo shop's questions with the help article retrieval finds for it in
the prompt (its figures are the ones the guard allows). Prints tokens per second of each and the
ratio (guard / no guard; 1.0 is free), and the share of the replies' figures the prompt does not give,
with and without the guard (0 with it).

    python bench/figure_guard.py --model var/base-model [--concurrency 8] [--requests 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# bench/feedback_store.py would shadow the package of that name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def questions() -> list[tuple[str, list]]:
    """Every seen phrasing of the demo shop's intents with the passages retrieval finds for it."""
    from loopdesk.knowledge import KnowledgeIndex
    from sim.company import load_company
    from sim.probe import shop_articles

    company = load_company()
    index = KnowledgeIndex(shop_articles(company))
    asked = [q for intent in company.intents for q in intent.phrasings]
    return [(q, index.passages(index.search(q, k=1))) for q in asked]


def load(engine, asked: list[tuple[str, list]], concurrency: int, requests: int) -> tuple[int, float, int, int]:
    """``concurrency`` customers asking ``requests`` questions each: tokens, seconds, figures stated, and
    figures stated that the prompt does not give."""
    from bot.runtime.figure_guard import figures

    totals, lock = [0, 0, 0], threading.Lock()

    def customer(i: int) -> None:
        for j in range(requests):
            question, passages = asked[(i * requests + j) % len(asked)]
            gen = engine.generate([{"role": "user", "content": question}], engine.choose_version(), passages=passages)
            stated = figures(gen.text)
            with lock:
                totals[0] += len(gen.reply_token_ids)
                totals[1] += len(stated)
                totals[2] += len(stated - figures(gen.context, engine.settings.contact_address))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(customer, range(concurrency)))
    return totals[0], time.perf_counter() - started, totals[1], totals[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="base model directory (default: the settings' base model)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="questions per customer and round")
    parser.add_argument("--rounds", type=int, default=3, help="loads per engine, alternating")
    args = parser.parse_args()

    from bot.runtime import Engine

    from bench.engine_bench import bench_store

    asked = questions()
    with bench_store(args.model, reply_deadline_s=0) as (model_dir, settings, store):
        print(f"model {model_dir}, {args.concurrency} customers x {args.requests} questions, {args.rounds} rounds, "
              f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
        engines = {"guard": Engine(settings, store), "no guard": Engine(settings.replace(figure_guard=False), store)}
        rates: dict[str, list[float]] = {name: [] for name in engines}
        stated = {name: [0, 0] for name in engines}
        try:
            for engine in engines.values():
                engine.start()
                load(engine, asked, 2, 1)  # warm-up
            for _ in range(args.rounds):
                for name, engine in engines.items():
                    tokens, seconds, figures_stated, ungrounded = load(engine, asked, args.concurrency, args.requests)
                    rates[name].append(tokens / seconds)
                    stated[name][0] += figures_stated
                    stated[name][1] += ungrounded
        finally:
            for engine in engines.values():
                engine.stop()
    for name in engines:
        shown = ", ".join(f"{r:.0f}" for r in rates[name])
        share = stated[name][1] / max(1, stated[name][0])
        print(f"{name:>9}: {statistics.median(rates[name]):7.0f} tokens/s (rounds: {shown}); "
              f"figures the prompt does not give: {stated[name][1]} of {stated[name][0]} ({share:.3f})")
    ratios = [g / n for g, n in zip(rates["guard"], rates["no guard"])]
    print(f"ratio guard / no guard, tokens/s: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
