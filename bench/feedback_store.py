"""Benchmark: feedback_store turn logging and rating writes against raw Redis SET.

For each AOF fsync policy (``always``, ``everysec``) it starts a fresh embedded Redis, runs
``redis-benchmark -t set`` with C clients, then C loopdesk client processes appending bot turns
(and writing ratings) through ``feedback_store`` on the same server, and prints throughput and
p99 latency with the ratio to SET.

Run:  python bench/feedback_store.py [--clients 2] [--ops 4000]
Needs redis-benchmark (Debian: apt-get install redis-tools).
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

# This script's name matches the package it measures: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402

from feedback_store import FeedbackStore  # noqa: E402
from feedback_store.records import BotTurn  # noqa: E402
from feedback_store.server import ensure_embedded_redis, stop_embedded_redis  # noqa: E402
from loopdesk.config import load_settings  # noqa: E402

CONTEXT = "<|system|>You are the support assistant of Northwind Outfitters.<|user|>Where is my order 12345? It was due on Monday.<|assistant|>"


def _turn() -> BotTurn:
    n = 40  # a typical reply length in tokens
    return BotTurn(index=0, text="Your order 12345 left our warehouse yesterday and arrives within 2 business days.",
                   context=CONTEXT, prompt_token_ids=list(range(60)), reply_token_ids=list(range(n)),
                   logprobs=[-1.234567] * n, adapter_version="base", latency_ms=35.2, finished=True,
                   created_at=time.time())


def _worker(args: tuple[str, str, str, int]) -> list[float]:
    url, prefix, op, n = args
    settings = load_settings({}, redis_url=url, key_prefix=prefix)
    store = FeedbackStore.from_settings(settings, announce=False)
    turn = _turn()
    latencies = []
    if op == "turn":
        conv, _ = store.conversations.start("base")
        for i in range(n):
            if i % 150 == 149:  # stay under the per-conversation turn cap
                conv, _ = store.conversations.start("base")
            t = time.perf_counter()
            store.conversations.append_bot(conv.id, turn)
            latencies.append(time.perf_counter() - t)
    else:
        convs = [store.conversations.start("base") for _ in range(n)]
        for conv, token in convs:  # a rating needs a bot reply to rate
            store.conversations.append_customer(conv.id, token, "Where is my order?")
            store.conversations.append_bot(conv.id, turn)
        for i, (conv, token) in enumerate(convs):
            t = time.perf_counter()
            store.ratings.rate(conv.id, token, 1 + i % 5, "fine")
            latencies.append(time.perf_counter() - t)
    return latencies


def _ours(url: str, op: str, clients: int, ops: int) -> tuple[float, float, float]:
    per = ops // clients
    with mp.get_context("spawn").Pool(clients) as pool:
        pool.map(_worker, [(url, f"warm{c}", op, 20) for c in range(clients)])
        start = time.perf_counter()
        results = pool.map(_worker, [(url, f"bench{c}", op, per) for c in range(clients)])
        elapsed = time.perf_counter() - start
    lat = np.concatenate([np.array(r) for r in results]) * 1000
    # rating clients first create their conversations (untimed per op), so throughput for
    # ratings is computed from the timed operations' total latency per client.
    busy = max(sum(r) for r in results) if op == "rating" else elapsed
    return len(lat) / busy, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def _redis_set(url: str, clients: int, ops: int) -> tuple[float, float, float]:
    parts = urlsplit(url)  # redis-benchmark reads no password from the environment: -a (a throwaway server's)
    out = subprocess.run(["redis-benchmark", "-p", str(parts.port), "-a", parts.password, "-t", "set", "-n", str(ops),
                          "-c", str(clients), "-d", "1000", "--csv"], capture_output=True, text=True, check=True).stdout
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["test"] == "SET")
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients on each side (default: one per core here)")
    parser.add_argument("--ops", type=int, default=4000, help="operations per measurement")
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        raise SystemExit("redis-benchmark not found: apt-get install redis-tools")
    print(f"{args.clients} clients, {args.ops} operations each measurement, SET values of 1000 bytes\n")
    print(f"{'fsync':9} {'operation':14} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs SET ops/s':>13}")
    for policy in ("always", "everysec"):
        data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{policy}-"))
        try:
            url = ensure_embedded_redis(data_dir, policy)
            set_rps, set_p50, set_p99 = _redis_set(url, args.clients, args.ops * 2)
            print(f"{policy:9} {'redis SET':14} {set_rps:9.0f} {set_p50:8.2f} {set_p99:8.2f} {'1.00x':>13}")
            for op in ("turn", "rating"):
                rps, p50, p99 = _ours(url, op, args.clients, args.ops)
                print(f"{policy:9} {op + ' write':14} {rps:9.0f} {p50:8.2f} {p99:8.2f} {rps / set_rps:12.2f}x")
        finally:
            stop_embedded_redis(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
