"""Serving benchmark: dynamic batching against one-request-at-a-time, and the cost of a hot-swap.

Runs the engine in-process (no HTTP): C simulated customers each send R requests back to back.
Baseline: the same engine with ``max_batch_size=1``. Then, with batching on, an adapter is
promoted mid-run and the largest extra gap between two streamed pieces of any reply in
flight during the swap is compared to the median decode step.

    python bench/serving.py                       # settings' base model (bootstrapped if missing)
    python bench/serving.py --model var/base-model --concurrency 1 8 32 --requests 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# bench/feedback_store.py would shadow the package of that name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

QUESTIONS = [
    "Where is my order? It has been a week.",
    "How do I return a tent that arrived damaged?",
    "Can I change the shipping address of my order?",
    "I was charged twice for the same jacket, please help.",
    "How long does a refund take to reach my card?",
    "I forgot my password and cannot log in.",
    "Do you ship to Canada, and how much does it cost?",
    "My hiking boots are too small, can I exchange them?",
]


@dataclass
class Run:
    """What one load level measured."""

    tokens: int = 0
    seconds: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft(self, q: float) -> float:
        return statistics.quantiles(self.ttft_ms, n=100, method="inclusive")[int(q) - 1] if len(self.ttft_ms) > 1 \
            else self.ttft_ms[0]


def load(engine, concurrency: int, requests: int) -> Run:
    """``concurrency`` customers, each asking ``requests`` questions one after the other."""
    run, lock = Run(), threading.Lock()

    def customer(i: int) -> None:
        for j in range(requests):
            gen = engine.generate([{"role": "user", "content": QUESTIONS[(i + j) % len(QUESTIONS)]}],
                                  engine.choose_version())
            with lock:
                run.tokens += len(gen.reply_token_ids)
                run.ttft_ms.append(gen.ttft_ms)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(customer, range(concurrency)))  # a customer's failure ends the run with its error
    run.seconds = time.perf_counter() - started
    return run


def swap_cost(engine, store, model_dir: Path, out_dir: Path, concurrency: int) -> dict[str, float]:
    """Gaps (ms) between streamed pieces of replies in flight across an adapter swap and outside it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from feedback_store.records import AdapterVersion
    from loopdesk.adapter_format import write_manifest

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora)
    version = store.adapters.next_version()
    adapter.save_pretrained(str(out_dir / version))
    sha = write_manifest(out_dir / version, version, str(model_dir), "base")["sha256"]
    now = time.time()
    store.adapters.register(AdapterVersion(version=version, path=str(out_dir / version), sha256=sha,
                                           base_model=str(model_dir), created_at=now, updated_at=now))
    arrivals: list[list[float]] = []
    stop = threading.Event()

    def customer(i: int) -> None:
        while not stop.is_set():
            times: list[float] = []
            engine.generate([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], engine.choose_version(),
                            on_text=lambda _: times.append(time.perf_counter()))
            arrivals.append(times)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        customers = [pool.submit(customer, i) for i in range(concurrency)]
        time.sleep(2.0)
        swap_started = time.perf_counter()
        store.adapters.promote(version)
        while engine.choose_version() != version:
            if version in engine.refused_versions():
                stop.set()
                raise RuntimeError(f"the engine refused adapter {version}: {engine.refused_versions()[version]}")
            time.sleep(0.005)
        swap_ended = time.perf_counter()
        time.sleep(2.0)
        stop.set()
        for done in customers:
            done.result()  # a customer's failure ends the run with its error
    gaps_outside, gaps_during, spans = [], [], []
    for times in arrivals:
        for a, b in zip(times, times[1:]):
            (gaps_during if b >= swap_started and a <= swap_ended else gaps_outside).append(b - a)
            spans.append((a, b))
    outside = sorted(gaps_outside)
    return {"median": 1000 * statistics.median(outside), "p99": 1000 * outside[int(0.99 * (len(outside) - 1))],
            "max_outside": 1000 * outside[-1], "max_during": 1000 * max(gaps_during, default=0.0),
            "max_like_window": 1000 * like_window_max(spans, swap_started, swap_ended),
            "swap_ms": 1000 * (swap_ended - swap_started)}


def like_window_max(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """The largest gap of windows as long as the swap's, slid over the run where no swap happened: the
    median over those windows (what ``max_during`` would be without a swap)."""
    length, first, last = end - start, min(a for a, _ in spans), max(b for _, b in spans)
    maxima, at = [], first
    while at + length <= last:
        if at + length < start or at > end:
            inside = [b - a for a, b in spans if b >= at and a <= at + length]
            if inside:
                maxima.append(max(inside))
        at += length / 4
    return statistics.median(maxima) if maxima else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="base model directory (default: the settings' base model; "
                        "a default-size tiny model is bootstrapped there when missing)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2, help="requests per simulated customer")
    parser.add_argument("--max-reply-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: settings)")
    args = parser.parse_args()

    from bot.runtime import Engine

    from bench.engine_bench import bench_store

    # no reply deadline: one-at-a-time, the 32nd customer's reply waits for the 31 before it
    with bench_store(args.model, reply_deadline_s=0, max_reply_tokens=args.max_reply_tokens or None,
                     torch_threads=args.threads) as (model_dir, settings, store):
        print(f"model {model_dir}, {settings.torch_threads or 'default'} torch threads, {os.cpu_count()} cpus, "
              f"max_reply_tokens {settings.max_reply_tokens}, {args.requests} requests per customer, "
              f"load average {os.getloadavg()[0]:.1f}")
        results: dict[tuple[str, int], Run] = {}
        engines = {"one-at-a-time": Engine(settings, store, max_batch_size=1),
                   "dynamic": Engine(settings, store, max_batch_size=settings.max_batch_size)}
        try:
            for engine in engines.values():
                engine.start()
                load(engine, 2, 1)  # warm-up
            for c in args.concurrency:  # baseline and batching back to back, so both see the same machine
                for mode, engine in engines.items():
                    results[mode, c] = load(engine, c, args.requests)
            engines.pop("one-at-a-time").stop()  # it would follow the promoted adapter too: load and probe it
            swap = swap_cost(engines["dynamic"], store, model_dir, settings.adapters_dir,
                             min(8, max(args.concurrency)))
        finally:
            for engine in engines.values():
                engine.stop()

    print(f"\n{'C':>3} {'mode':>14} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9}")
    for (mode, c), run in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0] != "one-at-a-time")):
        print(f"{c:>3} {mode:>14} {run.tokens_per_s:>8.0f} {run.ttft(50):>7.0f}ms {run.ttft(99):>7.0f}ms")
    print("\ndynamic batching vs one-at-a-time (baseline):")
    for c in args.concurrency:
        one, dyn = results["one-at-a-time", c], results["dynamic", c]
        print(f"  C={c:<3} throughput x{dyn.tokens_per_s / one.tokens_per_s:.2f}   "
              f"TTFT p50 x{one.ttft(50) / dyn.ttft(50):.2f} faster, p99 x{one.ttft(99) / dyn.ttft(99):.2f} faster")
    extra = swap["max_during"] - swap["median"]
    print(f"\nadapter swap under load (C={min(8, max(args.concurrency))}, {swap['swap_ms']:.0f} ms from promote to "
          f"serving): largest gap during the swap {swap['max_during']:.0f} ms, i.e. +{extra:.0f} ms = "
          f"{extra / swap['median']:.2f} median decode gaps ({swap['median']:.0f} ms) over the median; "
          f"without a swap: p99 gap {swap['p99']:.0f} ms, max {swap['max_outside']:.0f} ms, largest gap of an "
          f"equally long window {swap['max_like_window']:.0f} ms "
          f"(+{(swap['max_like_window'] - swap['median']) / swap['median']:.2f} median gaps)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
