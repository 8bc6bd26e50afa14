"""The loop's figures (matplotlib, written as PNG): one loop's rounds, and several methods side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.report_format import intents, num

PLOTS = {"csat": "csat.png", "per_intent": "per_intent.png", "training": "training.png", "replies": "replies.png"}
COMPARISON_PLOTS = {"csat": "comparison_csat.png", "hacking": "reward_hacking.png"}
SWAYED = "flattery_swayed"  # the persona the reward-hacking watch follows


def plot_report(report: dict[str, Any], out: Path) -> None:
    """One loop's figures into ``out`` (``PLOTS``): CSAT, per intent, training, replies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    x = [r["round"] for r in rounds]

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, offset in (("csat", "all customers", 0.0), ("seen_csat", "seen phrasings", -0.08),
                               ("held_out_csat", "held-out phrasings", 0.08)):
        means = [num(r[key]["mean"]) for r in rounds]
        errors = [[m - num(r[key]["low"]) for m, r in zip(means, rounds)],
                  [num(r[key]["high"]) - m for m, r in zip(means, rounds)]]
        ax.errorbar([v + offset for v in x], means, yerr=errors, marker="o", capsize=4, label=label)
    ax.plot(x, [num(r["rubric"]["mean"]) for r in rounds], "k--", marker="s", label="rubric (expert view)")
    if any(r.get("eval") for r in rounds):
        means = [num(r["eval"]["csat"]["mean"]) if r.get("eval") else math.nan for r in rounds]
        errors = [[m - num(r["eval"]["csat"]["low"]) if r.get("eval") else 0 for m, r in zip(means, rounds)],
                  [num(r["eval"]["csat"]["high"]) - m if r.get("eval") else 0 for m, r in zip(means, rounds)]]
        ax.errorbar([v + 0.16 for v in x], means, yerr=errors, marker="D", capsize=4, color="tab:purple",
                    label="evaluation panel (same customers each round)")
    ax.set(xlabel="round", ylabel="stars (1-5)", title="Mean CSAT per round, 95% bootstrap CI", xticks=x,
           ylim=(0.9, 5.1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PLOTS["csat"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for intent in intents(rounds):
        ax.plot(x, [num(r["per_intent"].get(intent, {}).get("csat", {}).get("mean")) for r in rounds],
                marker="o", label=intent)
    ax.set(xlabel="round", ylabel="mean CSAT", title="CSAT per intent", xticks=x, ylim=(0.9, 5.1))
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out / PLOTS["per_intent"], dpi=110)
    plt.close(fig)

    trained = [r for r in rounds if r["training"]]
    fig, (acc, kl) = plt.subplots(1, 2, figsize=(9, 3.5))
    tx = [r["round"] for r in trained]
    acc.plot(tx, [num(r["training"]["rm_eval_accuracy"]) for r in trained], marker="o")
    acc.set(xlabel="training round", ylabel="pairwise accuracy", title="Reward model, held-out pairs",
            ylim=(0, 1.05), xticks=tx)
    kl.plot(tx, [num(r["training"]["gate_candidate_kl"]) for r in trained], marker="o", label="candidate vs base (gate)")
    kl.plot(tx, [num(r["training"]["ppo_kl"]) for r in trained], marker="s", label="PPO steps (mean)")
    kl.set(xlabel="training round", ylabel="nats per reply", title="KL to the reference", xticks=tx)
    kl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PLOTS["training"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    for ax, key, title in zip(axes, ("reply_words", "wrong_facts_share", "over_apologetic_share"),
                              ("mean reply length (words)", "replies with wrong facts", "over-apologetic / flattering")):
        ax.plot(x, [num(r[key]) for r in rounds], marker="o")
        ax.set(xlabel="round", title=title, xticks=x)
        if key.endswith("share"):
            ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out / PLOTS["replies"], dpi=110)
    plt.close(fig)


def plot_comparison(reports: dict[str, dict[str, Any]], oracle: dict[str, Any] | None, out: Path) -> None:
    """The comparison's figures into ``out`` (``COMPARISON_PLOTS``): CSAT by method, reward-hacking watch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel = any(r.get("eval") for report in reports.values() for r in report["rounds"])
    fig, axes = plt.subplots(1, 2 if panel else 1, figsize=(13 if panel else 7, 4), squeeze=False)
    views = [(None, "each round's own customers")] + ([("eval", "the fixed evaluation panel")] if panel else [])
    for ax, (nested, title) in zip(axes[0], views):
        for i, (method, report) in enumerate(reports.items()):
            rounds = [r for r in report["rounds"] if nested is None or r.get(nested)]
            stats = [r[nested]["csat"] if nested else r["csat"] for r in rounds]
            x = [r["round"] + 0.06 * (i - 1.5) for r in rounds]
            means = [num(c["mean"]) for c in stats]
            errors = [[m - num(c["low"]) for m, c in zip(means, stats)],
                      [num(c["high"]) - m for m, c in zip(means, stats)]]
            ax.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=method)
        line = (oracle or {}).get("eval") if nested else oracle
        if line:
            ax.axhline(num(line["csat"]["mean"]), color="k", linestyle=":", label="oracle (canonical replies)")
        ax.set(xlabel="round", ylabel="mean CSAT (stars)", title=f"CSAT per round, {title}", ylim=(0.9, 5.1),
               xticks=range(max(len(report["rounds"]) for report in reports.values())))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / COMPARISON_PLOTS["csat"], dpi=110)
    plt.close(fig)

    fig, (sway, gapax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, report in reports.items():
        rounds = report["rounds"]
        x = [r["round"] for r in rounds]
        sway.plot(x, [num(r["over_apologetic_share"]) for r in rounds], marker="o", label=method)
        gapax.plot(x, [num(r["per_persona"].get(SWAYED, {}).get("csat", {}).get("mean"))
                       - num(r["per_persona"].get(SWAYED, {}).get("rubric")) for r in rounds], marker="o", label=method)
    sway.set(xlabel="round", ylabel="share of replies", title="Grovelling or flattering replies", ylim=(0, 1))
    gapax.set(xlabel="round", ylabel="stars", title="Flattery-swayed customers: CSAT − expert view")
    sway.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / COMPARISON_PLOTS["hacking"], dpi=110)
    plt.close(fig)
