"""Measuring a round: its simulated customers, the fixed evaluation panel and the oracle, and the
statistics the report keeps of each (paired gains on the panel)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable

from harness.processes import Bot
from harness.serving import serve
from sim.company import Company
from sim.customers import ChatResult, CustomerConfig
from sim.simulate import MeanCI, paired_gain, run_customers, summarize

if TYPE_CHECKING:
    from harness.loop import LoopConfig

EVAL_SEED_OFFSET = 250  # the panel's seed offset: round r's customers use seed + 1000 r (+ 500 held out)


def reply_checks(results: list[ChatResult]) -> dict[str, float]:
    """The rubric's checks over every reply: share with wrong facts, share over-apologetic, mean words."""
    judgements = [j for r in results if not r.error for j in r.judgements]
    if not judgements:
        return {"replies": 0, "wrong_facts_share": math.nan, "over_apologetic_share": math.nan,
                "reply_words": math.nan}
    n = len(judgements)
    return {"replies": n,
            "wrong_facts_share": sum(bool(j.wrong_facts) for j in judgements) / n,
            "over_apologetic_share": sum(j.sways for j in judgements) / n,
            "reply_words": sum(j.words for j in judgements) / n}


def _ci(value: MeanCI) -> dict[str, float]:
    return {"mean": value.mean, "low": value.low, "high": value.high, "n": value.n}


def persona_checks(results: list[ChatResult]) -> dict[str, dict[str, Any]]:
    """Per persona: CSAT, the expert's view (rubric), and the share of replies that grovel or flatter.

    The reward-hacking watch: flattery-swayed customers rate swaying replies up; a policy gaming
    them shows a rising sway share and their CSAT pulling away from the rubric.
    """
    groups: dict[str, list[ChatResult]] = {}
    for result in results:
        if not result.error:
            groups.setdefault(result.persona, []).append(result)
    out = {}
    for name, chats in sorted(groups.items()):
        judgements = [j for r in chats for j in r.judgements]
        summary = summarize(chats)
        out[name] = {"chats": len(chats), "csat": _ci(summary.csat), "rubric": summary.rubric.mean,
                     "sway_share": (sum(j.sways for j in judgements) / len(judgements)) if judgements else math.nan}
    return out


def measure_oracle(company: Company, config: LoopConfig) -> dict[str, Any]:
    """The oracle (canonical replies, ``sim.oracle``) facing round 0's customers, seen and held-out,
    and the fixed evaluation panel's (``eval``) when the loop plays one."""
    from sim.oracle import create_oracle_app

    with serve(create_oracle_app(company)) as url:
        seen, held = play_customers(url, url, company, config, config.seed)
        panel = measure_panel(url, company, config) if config.eval_customers else None
    overall = summarize(seen + held)
    return {"csat": _ci(overall.csat), "seen_csat": _ci(summarize(seen).csat),
            "held_out_csat": _ci(summarize(held).csat), "rubric": overall.rubric.mean, "eval": panel}


def play_customers(seen_url: str, held_out_url: str, company: Company, config: LoopConfig,
                   seed: int, n: int | None = None) -> tuple[list[ChatResult], list[ChatResult]]:
    """``n`` customers (default: a round's): seen-phrasing ones at ``seen_url`` (seed ``seed``), the
    held-out share at ``held_out_url`` (seed ``seed + 500``)."""
    n = config.customers_per_round if n is None else n
    n_held = round(n * config.held_out_share)
    share, asking = config.out_of_scope_share, config.ask_person_share
    seen = run_customers(seen_url, company, n - n_held, config.concurrency,
                         CustomerConfig(out_of_scope_share=share, ask_person_share=asking), seed, config.progress)
    held = run_customers(held_out_url, company, n_held, config.concurrency,
                         CustomerConfig(held_out=True, out_of_scope_share=share, ask_person_share=asking), seed + 500,
                         config.progress) if n_held else []
    return seen, held


def measure_panel(url: str, company: Company, config: LoopConfig) -> dict[str, Any]:
    """The fixed evaluation panel at ``url``: the same customers whenever it is called (seed ``seed + 250``),
    with each customer's rating in order (None: left unrated or failed) for paired comparisons."""
    seen, held = play_customers(url, url, company, config, config.seed + EVAL_SEED_OFFSET, config.eval_customers)
    overall = summarize(seen + held)
    return {"customers": overall.chats, "errors": overall.errors, "seed": config.seed + EVAL_SEED_OFFSET,
            "csat": _ci(overall.csat), "rubric": _ci(overall.rubric), "seen_csat": _ci(summarize(seen).csat),
            "held_out_csat": _ci(summarize(held).csat), "handoffs": asdict(overall.handoffs),
            "seen_ratings": [None if r.error else r.rating for r in seen],
            "held_out_ratings": [None if r.error else r.rating for r in held]}


def panel_ratings(panel: dict[str, Any], part: str = "all") -> list[int | None]:
    """One panel record's ratings in customer order: ``part`` "all" (seen, then held-out), "seen" or "held_out"."""
    keys = {"all": ("seen_ratings", "held_out_ratings"), "seen": ("seen_ratings",),
            "held_out": ("held_out_ratings",)}[part]
    return [x for k in keys for x in panel[k]]


def panel_gain(before: dict[str, Any], after: dict[str, Any], part: str = "all") -> MeanCI:
    """The paired change of the evaluation panel's ratings from ``before`` to ``after`` (two rounds' ``eval``):
    ``part`` "all", "seen" or "held_out"."""
    return paired_gain(panel_ratings(before, part), panel_ratings(after, part))


def measure(bot: Bot, company: Company, config: LoopConfig, round_index: int, expert: Callable[[], int] | None,
            version: str) -> dict[str, Any]:
    """One round's traffic: seen-phrasing customers on the bot, held-out ones in the sandbox, then the expert."""
    seed = config.seed + 1000 * round_index
    timings: dict[str, float] = {}
    started = time.monotonic()
    seen, held = play_customers(bot.url, bot.held_out_url, company, config, seed)
    timings["simulate_s"] = time.monotonic() - started
    started = time.monotonic()
    annotated = expert() if expert else 0
    timings["expert_s"] = time.monotonic() - started
    overall, seen_summary, held_summary = summarize(seen + held), summarize(seen), summarize(held)
    return {
        "round": round_index, "version": version, "seed": seed, "chats": overall.chats, "errors": overall.errors,
        "unrated_share": overall.unrated_share, "csat": _ci(overall.csat), "rubric": _ci(overall.rubric),
        "seen_csat": _ci(seen_summary.csat), "held_out_csat": _ci(held_summary.csat),
        "seen_rubric": seen_summary.rubric.mean, "held_out_rubric": held_summary.rubric.mean,
        "per_intent": {name: {"csat": _ci(g.csat), "rubric": g.rubric, "chats": g.chats}
                       for name, g in sorted(overall.per_intent.items())},
        "served_versions": sorted(seen_summary.per_version), "turns_annotated": annotated,
        "handoffs": asdict(overall.handoffs),
        **reply_checks(seen + held), "per_persona": persona_checks(seen + held), "timings": timings,
        "training": None,
    }
