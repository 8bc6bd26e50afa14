"""Multi-turn benchmark: a chat's fourth turn reusing its history's keys and values against reading it all again.

Grounded four-turn chats with the demo shop: each customer message retrieves its help article the way the
bot does (``loopdesk.knowledge.customer_query`` over the shop's articles, ``--passages`` of them, into the
system message), each reply goes into the next turn's history as the bot logs it. The chats take their turns
in rotation, so the other chats' turns come between two turns of one chat. Two engines of the same model
in the same process serve them:

- **reused**: the settings' prefix store (``bot.runtime.prefix_store``): the fourth turn's prompt takes the
  keys and values of the system prompt, the article and the three earlier turns (prompts and replies) from
  what the chat's third turn left, and its prefill reads the rest;
- **recomputed** (the baseline): the same engine with ``prefix_cache_mb=0``, which reads the whole prompt.

Only the fourth turn is asked of both, one after the other (the order alternates), each from the same
sampling seed, so both draw the same replies while their log-probs agree. Measured: the fourth turn's time
to first token (the engine's ``ttft_ms``: prompt built, prefilled, first token sampled) in both, their
ratio per chat and the ratio of the medians, the prompt tokens reused, and the largest absolute difference
between the two paths' log-probs over the first ``--compare-tokens`` reply tokens.

    python bench/prefix_reuse.py --model /path/to/smollm2-135m-instruct --repeats 3     # about 5 minutes
    python bench/prefix_reuse.py               # the settings' base model (bootstrapped if missing)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

# bench/feedback_store.py would shadow the package of that name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402

CHATS = [  # each message's retrieval finds the chat's one article (checked and printed as it runs)
    ["I was charged twice for the same order.", "Both charges show on my card statement.",
     "Will the second charge be refunded automatically?", "How many days until the double charge is refunded?"],
    ["I cannot log in, I forgot my password.", "I asked for a password reset email but it never came.",
     "The password reset link says it has expired.", "Can you reset my password for me instead?"],
    ["The tracking page of my order has not changed for four days.",
     "Where is my order now according to the tracking?", "Can you tell me when the order status will update?",
     "What does the order status 'in transit' mean?"],
    ["I want to exchange my hiking boots for a bigger size.", "Can I exchange the boots for a different colour too?",
     "How long does an exchange take?", "Do I pay shipping for the exchange of my boots?"],
]


@dataclass
class Pair:
    """One chat's fourth turn, served both ways."""

    chat: int
    prompt_tokens: int
    reused_tokens: int
    articles: list[tuple[str, ...]]
    ttft_reused_ms: float
    ttft_recomputed_ms: float
    same_reply_tokens: int
    reply_tokens: int
    max_logprob_diff: float


def converse(engines: dict, index, top_k: int, repeat: int, compare_tokens: int) -> list[Pair]:
    """Every chat's four turns, in rotation, on the reused engine; the fourth also on the recomputed one."""
    from loopdesk.knowledge import customer_query

    histories: list[list[dict[str, str]]] = [[] for _ in CHATS]
    articles: list[list[tuple[str, ...]]] = [[] for _ in CHATS]
    pairs = []
    for turn in range(4):
        for chat, history in enumerate(histories):
            history.append({"role": "user", "content": CHATS[chat][turn]})
            hits = index.search(customer_query([m["content"] for m in history if m["role"] == "user"]), k=top_k,
                                min_score=0.0)
            articles[chat].append(tuple(h.id for h in hits))
            passages = index.passages(hits)
            if turn < 3:
                gen = engines["reused"].generate(history, "base", passages=passages)
                history.append({"role": "assistant", "content": gen.text})
                continue
            seed = 1000 * repeat + chat
            order = ["reused", "recomputed"] if (repeat + chat) % 2 == 0 else ["recomputed", "reused"]
            served = {}
            for mode in order:
                torch.manual_seed(seed)  # both draw the same numbers: the same replies while log-probs agree
                served[mode] = engines[mode].generate(history, "base", passages=passages)
            reused, recomputed = served["reused"], served["recomputed"]
            same = 0
            while same < min(len(reused.reply_token_ids), len(recomputed.reply_token_ids)) \
                    and reused.reply_token_ids[same] == recomputed.reply_token_ids[same]:
                same += 1
            compared = min(compare_tokens, same)  # past the first token that differs, contexts differ too
            pairs.append(Pair(chat, len(reused.prompt_token_ids), reused.reused_prompt_tokens, articles[chat],
                              reused.ttft_ms, recomputed.ttft_ms, same, len(reused.reply_token_ids),
                              max((abs(a - b) for a, b in zip(reused.logprobs[:compared], recomputed.logprobs)),
                                  default=math.nan)))
            if recomputed.reused_prompt_tokens:
                raise RuntimeError("the recomputing engine reused keys and values: its prefix store is not off")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="base model directory (default: the settings' base model; "
                        "a default-size tiny model is bootstrapped there when missing)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the four chats (new replies each)")
    parser.add_argument("--passages", type=int, default=None, help="help articles per reply (default: settings)")
    parser.add_argument("--max-reply-tokens", type=int, default=32)
    parser.add_argument("--compare-tokens", type=int, default=16,
                        help="first reply tokens whose log-probs are compared")
    parser.add_argument("--prefix-cache-mb", type=int, default=256, help="the reused engine's prefix store")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: settings)")
    args = parser.parse_args()

    from bot.runtime import Engine
    from sim.knowledge_eval import demo_index

    from bench.engine_bench import bench_store

    with bench_store(args.model, max_reply_tokens=args.max_reply_tokens, kb_top_k=args.passages,
                     torch_threads=args.threads) as (model_dir, settings, store):
        engines = {"reused": Engine(settings.replace(prefix_cache_mb=args.prefix_cache_mb), store),
                   "recomputed": Engine(settings.replace(prefix_cache_mb=0), store)}
        load_before = os.getloadavg()
        print(f"model {model_dir}, {settings.torch_threads or 'default'} torch threads, {os.cpu_count()} cpus, "
              f"{settings.kb_top_k} help article(s) per reply, max_reply_tokens {settings.max_reply_tokens}, "
              f"{args.repeats} × {len(CHATS)} chats, load average {load_before[0]:.1f}")
        index = demo_index()
        pairs: list[Pair] = []
        try:
            for engine in engines.values():
                engine.start()
                engine.generate([{"role": "user", "content": "Hello"}], "base")  # warm-up
            for repeat in range(args.repeats):
                pairs += converse(engines, index, settings.kb_top_k, repeat, args.compare_tokens)
                print(f"  round {repeat + 1}/{args.repeats} done", flush=True)
        finally:
            for engine in engines.values():
                engine.stop()
    report(pairs, args.compare_tokens, load_before, os.getloadavg())


def report(pairs: list[Pair], compare_tokens: int, load_before: tuple, load_after: tuple) -> None:
    print(f"\n{'chat':>4} {'articles (turns 1-4)':<44} {'prompt':>6} {'reused':>6} {'TTFT reused':>11} "
          f"{'recomputed':>10} {'ratio':>6} {'same tokens':>11} {'max |Δ logp|':>12}")
    for p in pairs:
        names = " ".join("+".join(a) for a in p.articles)
        print(f"{p.chat:>4} {names[:44]:<44} {p.prompt_tokens:>6} {p.reused_tokens:>6} {p.ttft_reused_ms:>9.0f}ms "
              f"{p.ttft_recomputed_ms:>8.0f}ms {p.ttft_recomputed_ms / p.ttft_reused_ms:>6.2f} "
              f"{p.same_reply_tokens:>5}/{p.reply_tokens:<5} {p.max_logprob_diff:>12.2e}")
    reused = statistics.median(p.ttft_reused_ms for p in pairs)
    recomputed = statistics.median(p.ttft_recomputed_ms for p in pairs)
    ratios = [p.ttft_recomputed_ms / p.ttft_reused_ms for p in pairs]
    worst = max((p.max_logprob_diff for p in pairs), key=lambda d: math.inf if math.isnan(d) else d)
    stable = sum(len(set(p.articles)) == 1 for p in pairs)
    print(f"\nfourth turn, prefix reused vs recomputed (baseline): TTFT median {reused:.0f} ms vs {recomputed:.0f} ms "
          f"= x{recomputed / reused:.2f} faster (paired ratios: median x{statistics.median(ratios):.2f}, "
          f"min x{min(ratios):.2f}); prompt {statistics.median(p.prompt_tokens for p in pairs):.0f} tokens, "
          f"{statistics.median(p.reused_tokens / p.prompt_tokens for p in pairs):.0%} reused (median); "
          f"{stable}/{len(pairs)} chats kept their article through the four turns")
    identical = sum(p.same_reply_tokens == p.reply_tokens for p in pairs)
    print(f"log-probs of the first {compare_tokens} reply tokens (up to the first token that differs): "
          f"largest |difference| {worst:.2e}; replies identical in {identical}/{len(pairs)} chats")
    met = recomputed / reused >= 2 and worst <= 1e-4
    print(f"target (TTFT x2 faster, log-probs within 1e-4): {'met' if met else 'NOT met'}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")


if __name__ == "__main__":
    main()
