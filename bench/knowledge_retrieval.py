"""Benchmark: knowledge retrieval on the demo shop, and search latency on a 1,000-article KB.

Accuracy: top-1 and top-3 share of the expected article for every seen and held-out phrasing
of every intent, every follow-up (searched after each opening of its intent), and the
questions of the person/assistant article; the top-1 score distribution of those in-scope
questions against the out-of-scope ones, and what ``MIN_SCORE`` keeps and rejects.
Latency: ``KnowledgeIndex.search`` (tokenising, scoring, top-k hits) on a generated
1,000-article knowledge base, against the named baseline ``bm25s.BM25.retrieve`` on the
already-tokenised query (the library call alone).

Run:  python bench/knowledge_retrieval.py [--articles 1000] [--misses]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

# bench/feedback_store.py shares the package's name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402

from loopdesk.knowledge import MIN_SCORE, KnowledgeIndex, tokenize  # noqa: E402
from sim.company import load_company  # noqa: E402
from sim.knowledge_eval import ANSWERED, KINDS, demo_index, evaluate, generated_articles  # noqa: E402


def accuracy(show_misses: bool) -> None:
    reports = evaluate(demo_index())
    print(f"retrieval on the demo shop (min_score = {MIN_SCORE})")
    print(f"{'probes':<17}{'n':>5}{'top-1':>8}{'top-3':>8}{'passage':>9}   top-1 score p1 / p5 / p50 / max"
          "   >= min_score")
    for kind in KINDS:
        r = reports[kind]
        passage = f"{r.passage_rate:9.3f}" if kind in ANSWERED else f"{'':9}"
        ranks = f"{r.top1_rate:8.3f}{r.top3_rate:8.3f}{passage}" if kind in (*ANSWERED, "extra") else f"{'':25}"
        spread = " / ".join(f"{r.quantile(q):.2f}" for q in (0.01, 0.05, 0.5, 1.0))
        print(f"{kind:<17}{r.n:>5}{ranks}   {spread:<32}  {r.share_at_least(MIN_SCORE):.3f}")
        if show_misses:
            for probe, ranked in r.misses:
                print(f"    miss: {probe.question!r} wants {probe.expected}, got {ranked}")
    for kind in ("out_of_scope", "shop_words"):
        rejected = 1 - reports[kind].share_at_least(MIN_SCORE)
        print(f"{kind} questions rejected (best score < {MIN_SCORE}): {rejected:.3f}")


def latency(n: int) -> None:
    rng = random.Random(7)
    articles = generated_articles(n, rng)
    started = time.perf_counter()
    index = KnowledgeIndex(articles)
    build_s = time.perf_counter() - started
    company = load_company()
    queries = [q for intent in company.intents for q in intent.held_out + intent.phrasings]
    ours, library = [], []
    for query in queries * 3:
        started = time.perf_counter()
        index.search(query, k=3)
        ours.append(time.perf_counter() - started)
        tokens = [t for t in tokenize([query])[0] if t in index._bm25.vocab_dict]  # the baseline: bm25s alone
        if tokens:
            started = time.perf_counter()
            index._bm25.retrieve([tokens], k=3, show_progress=False, n_threads=0)
            library.append(time.perf_counter() - started)
    ours_ms, lib_ms = np.array(ours) * 1000, np.array(library) * 1000
    print(f"\nsearch on {len(index)} articles (index built in {build_s * 1000:.0f} ms), {len(ours)} queries")
    print(f"  KnowledgeIndex.search   p50 {np.percentile(ours_ms, 50):.3f} ms   p99 {np.percentile(ours_ms, 99):.3f} ms")
    print(f"  bm25s.BM25.retrieve     p50 {np.percentile(lib_ms, 50):.3f} ms   p99 {np.percentile(lib_ms, 99):.3f} ms")
    print(f"  ratio search / retrieve (p99): {np.percentile(ours_ms, 99) / np.percentile(lib_ms, 99):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=1000, help="size of the generated knowledge base")
    parser.add_argument("--misses", action="store_true", help="list every probe whose top-1 is not its article")
    args = parser.parse_args()
    accuracy(args.misses)
    latency(args.articles)


if __name__ == "__main__":
    main()
