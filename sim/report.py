"""The loop's report: ``report.json`` (everything measured), ``report.md`` and PNG plots.

Rounds are indexed as the loop runs them: round 0 measures the starting adapter, round r ≥ 1
measures the version served after the r-th training round (the same version when it was rejected).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sim.simulate_cli import _clean

PLOTS = {"csat": "csat.png", "per_intent": "per_intent.png", "training": "training.png", "replies": "replies.png"}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _intents(rounds: list[dict[str, Any]]) -> list[str]:
    return sorted({intent for r in rounds for intent in r["per_intent"]})


def _plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    x = [r["round"] for r in rounds]

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, offset in (("csat", "all customers", 0.0), ("seen_csat", "seen phrasings", -0.08),
                               ("held_out_csat", "held-out phrasings", 0.08)):
        means = [_num(r[key]["mean"]) for r in rounds]
        errors = [[m - _num(r[key]["low"]) for m, r in zip(means, rounds)],
                  [_num(r[key]["high"]) - m for m, r in zip(means, rounds)]]
        ax.errorbar([v + offset for v in x], means, yerr=errors, marker="o", capsize=4, label=label)
    ax.plot(x, [_num(r["rubric"]["mean"]) for r in rounds], "k--", marker="s", label="rubric (expert view)")
    ax.set(xlabel="round", ylabel="stars (1-5)", title="Mean CSAT per round, 95% bootstrap CI", xticks=x,
           ylim=(0.9, 5.1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PLOTS["csat"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for intent in _intents(rounds):
        ax.plot(x, [_num(r["per_intent"].get(intent, {}).get("csat", {}).get("mean")) for r in rounds],
                marker="o", label=intent)
    ax.set(xlabel="round", ylabel="mean CSAT", title="CSAT per intent", xticks=x, ylim=(0.9, 5.1))
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out / PLOTS["per_intent"], dpi=110)
    plt.close(fig)

    trained = [r for r in rounds if r["training"]]
    fig, (acc, kl) = plt.subplots(1, 2, figsize=(9, 3.5))
    tx = [r["round"] for r in trained]
    acc.plot(tx, [_num(r["training"]["rm_eval_accuracy"]) for r in trained], marker="o")
    acc.set(xlabel="training round", ylabel="pairwise accuracy", title="Reward model, held-out pairs",
            ylim=(0, 1.05), xticks=tx)
    kl.plot(tx, [_num(r["training"]["gate_candidate_kl"]) for r in trained], marker="o", label="candidate vs base (gate)")
    kl.plot(tx, [_num(r["training"]["ppo_kl"]) for r in trained], marker="s", label="PPO steps (mean)")
    kl.set(xlabel="training round", ylabel="nats per reply", title="KL to the reference", xticks=tx)
    kl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PLOTS["training"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    for ax, key, title in zip(axes, ("reply_words", "wrong_facts_share", "over_apologetic_share"),
                              ("mean reply length (words)", "replies with wrong facts", "over-apologetic / flattering")):
        ax.plot(x, [_num(r[key]) for r in rounds], marker="o")
        ax.set(xlabel="round", title=title, xticks=x)
        if key.endswith("share"):
            ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out / PLOTS["replies"], dpi=110)
    plt.close(fig)


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _ci(stats: dict[str, Any]) -> str:
    if not stats["n"]:
        return "–"
    return f"{stats['mean']:.2f} [{stats['low']:.2f}, {stats['high']:.2f}] (n={stats['n']})"


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    rounds, cfg = report["rounds"], report["config"]
    lines = ["# loopdesk loop report", "",
             f"Base model `{report['base_model']}`; {cfg['rounds']} training round(s), "
             f"{cfg['customers_per_round']} simulated customers per round ({cfg['held_out_share']:.0%} with "
             f"held-out phrasings, measured in a sandbox and never trained on), experts "
             f"{'on' if cfg['experts'] else 'off'}, seed {cfg['seed']}; wall time {report['wall_s']:.0f} s.",
             "Round 0 measures the starting adapter; round r measures what is served after the r-th training "
             "round. A candidate that passes the gate becomes active at once (see `sim/loop.py`).", "",
             f"Reproduce: `loopdesk loop --rounds {cfg['rounds']} --customers-per-round {cfg['customers_per_round']} "
             f"--concurrency {cfg['concurrency']} --{'' if cfg['experts'] else 'no-'}experts --seed {cfg['seed']} "
             f"--held-out-share {cfg['held_out_share']}` (plus `--round-config` for any overrides in report.json).",
             "",
             "## CSAT and the expert view", "", f"![CSAT per round]({PLOTS['csat']})", "",
             "| round | version | training | CSAT (95% CI) | seen phrasings | held-out phrasings | rubric | unrated |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t = r["training"]
        trained = f"{t['run_id']} {t['status']} → {t['adapter_version'] or '–'}" if t else "–"
        lines.append(f"| {r['round']} | {r['version']} | {trained} | {_ci(r['csat'])} | {_ci(r['seen_csat'])} | "
                     f"{_ci(r['held_out_csat'])} | {_fmt(r['rubric']['mean'])} | {_fmt(r['unrated_share'], '.0%')} |")
    lines += ["", "## Per intent (mean CSAT / rubric)", "", f"![CSAT per intent]({PLOTS['per_intent']})", "",
              "| intent | " + " | ".join(f"round {r['round']}" for r in rounds) + " |",
              "| --- |" + " --- |" * len(rounds)]
    for intent in _intents(rounds):
        cells = [r["per_intent"].get(intent) for r in rounds]
        lines.append(f"| {intent} | " + " | ".join(
            f"{_fmt(c['csat']['mean'])} / {_fmt(c['rubric'])}" if c else "–" for c in cells) + " |")
    lines += ["", "## Replies (the rubric's checks over every reply)", "", f"![Replies]({PLOTS['replies']})", "",
              "| round | replies | mean words | wrong facts | over-apologetic / flattering | turns annotated |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['round']} | {r['replies']} | {_fmt(r['reply_words'], '.1f')} | "
              f"{_fmt(r['wrong_facts_share'], '.1%')} | {_fmt(r['over_apologetic_share'], '.1%')} | "
              f"{r['turns_annotated']} |" for r in rounds]
    lines += ["", "## Training", "", f"![Training]({PLOTS['training']})", "",
              "| round | run | status | adapter | RM held-out accuracy (pairs) | KL to base (gate) | PPO KL | "
              "gate RM score cand./active | reasons |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t = r["training"]
        if t:
            lines.append(f"| {r['round']} | {t['run_id']} | {t['status']} | {t['adapter_version'] or '–'} "
                         f"({t['adapter_status'] or '–'}) | {_fmt(t['rm_eval_accuracy'])} ({_fmt(t['pairs_eval'], 'd')}) | "
                         f"{_fmt(t['gate_candidate_kl'])} | {_fmt(t['ppo_kl'])} | "
                         f"{_fmt(t['gate_candidate_rm_score'])} / {_fmt(t['gate_active_rm_score'])} | "
                         f"{'; '.join(t['gate_reasons']) or t['error'] or '–'} |")
    lines += ["", "## Stage timings (seconds)", "",
              "| round | simulate | expert | train (queue → finished) | of which trainer | hot-swap |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t = r["training"] or {"timings": {}}
        lines.append(f"| {r['round']} | {r['timings']['simulate_s']:.1f} | {r['timings']['expert_s']:.1f} | "
                     f"{_fmt(t['timings'].get('train_s'), '.1f')} | {_fmt(t.get('trainer_duration_s'), '.1f')} | "
                     f"{_fmt(t['timings'].get('swap_s'), '.1f')} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    _plot(report, out)
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return [out / "report.json", out / "report.md", *(out / name for name in PLOTS.values())]
