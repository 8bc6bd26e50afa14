"""The loop's report: ``report.json`` (everything measured), ``report.md`` and PNG plots.

Rounds are indexed as the loop runs them: round 0 measures the starting adapter, round r ≥ 1
measures the version served after the r-th training round (the same version when it was rejected).
Each round is measured twice where the loop played a fixed evaluation panel: on its own customers
(different every round, the ones whose feedback trains the next round) and on the panel (the same
customers every round, never trained on), whose changes are paired. Reports written before the
panel existed have no ``eval`` and show "–" for it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.loop import panel_gain, panel_ratings
from sim.simulate import MeanCI, paired_gain
from harness.simulate_cli import _clean

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
    if any(r.get("eval") for r in rounds):
        means = [_num(r["eval"]["csat"]["mean"]) if r.get("eval") else math.nan for r in rounds]
        errors = [[m - _num(r["eval"]["csat"]["low"]) if r.get("eval") else 0 for m, r in zip(means, rounds)],
                  [_num(r["eval"]["csat"]["high"]) - m if r.get("eval") else 0 for m, r in zip(means, rounds)]]
        ax.errorbar([v + 0.16 for v in x], means, yerr=errors, marker="D", capsize=4, color="tab:purple",
                    label="evaluation panel (same customers each round)")
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


def _serving(report: dict[str, Any]) -> tuple[str, str]:
    """The report's serving temperature as a phrase and as the reproduce command's prefix (reports
    written before the loop recorded it have neither)."""
    if "temperature" not in report:
        return "", ""
    t = report["temperature"]
    return f", served and sampled at temperature {t:g}", f"LOOPDESK_TEMPERATURE={t:g} "


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    rounds, cfg = report["rounds"], report["config"]
    served, env = _serving(report)
    lines = ["# loopdesk loop report", "",
             f"Base model `{report['base_model']}`{served}; {cfg['rounds']} training round(s), "
             f"{cfg['customers_per_round']} simulated customers per round ({cfg['held_out_share']:.0%} with "
             f"held-out phrasings, measured in a sandbox and never trained on), experts "
             f"{'on' if cfg['experts'] else 'off'}, seed {cfg['seed']}; wall time {report['wall_s']:.0f} s.",
             "Round 0 measures the starting adapter; round r measures what is served after the r-th training "
             "round. A candidate that passes the gate becomes active at once (see `harness/loop.py`).", "",
             f"Reproduce: `{env}loopdesk loop --rounds {cfg['rounds']} --customers-per-round {cfg['customers_per_round']} "
             f"--concurrency {cfg['concurrency']} --{'' if cfg['experts'] else 'no-'}experts --seed {cfg['seed']} "
             f"--held-out-share {cfg['held_out_share']}{_eval_flag(cfg)}` (plus `--round-config` for any overrides in "
             "report.json).",
             "",
             "## CSAT and the expert view", "", f"![CSAT per round]({PLOTS['csat']})", "",
             "| round | version | training | CSAT (95% CI) | seen phrasings | held-out phrasings | rubric | unrated |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t = r["training"]
        trained = f"{t['run_id']} {t['status']} → {t['adapter_version'] or '–'}" if t else "–"
        lines.append(f"| {r['round']} | {r['version']} | {trained} | {_ci(r['csat'])} | {_ci(r['seen_csat'])} | "
                     f"{_ci(r['held_out_csat'])} | {_fmt(r['rubric']['mean'])} | {_fmt(r['unrated_share'], '.0%')} |")
    if report.get("oracle"):
        lines += ["", f"Oracle (the KB's canonical replies) on round 0's customers: {_ci(report['oracle']['csat'])}; "
                  f"seen {_ci(report['oracle']['seen_csat'])}, held-out {_ci(report['oracle']['held_out_csat'])}."]
    lines += ["", "### Targets (issue 8), on each round's own customers", "", "| target | measured | met |",
              "| --- | --- | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in targets(report, report.get("oracle"))]
    if any(r.get("eval") for r in rounds):
        lines += ["", *panel_section(report)]
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
              "gate RM score cand./active | gate expert view cand./active | reviewed contexts | reasons |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t = r["training"]
        if t:
            lines.append(f"| {r['round']} | {t['run_id']} | {t['status']} | {t['adapter_version'] or '–'} "
                         f"({t['adapter_status'] or '–'}) | {_fmt(t['rm_eval_accuracy'])} ({_fmt(t['pairs_eval'], 'd')}) | "
                         f"{_fmt(t['gate_candidate_kl'])} | {_fmt(t['ppo_kl'])} | "
                         f"{_fmt(t['gate_candidate_rm_score'])} / {_fmt(t['gate_active_rm_score'])} | "
                         f"{_fmt(t.get('gate_candidate_reference_score'))} / {_fmt(t.get('gate_active_reference_score'))} | "
                         f"{_fmt(t.get('reference_contexts'), 'd')} | "
                         f"{'; '.join(t['gate_reasons']) or t['error'] or '–'} |")
    lines += ["", "## Stage timings (seconds)", "",
              "| round | simulate | expert | train (queue → finished) | of which trainer | of which policy update | "
              "hot-swap | evaluation panel |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        t = r["training"] or {"timings": {}}
        lines.append(f"| {r['round']} | {r['timings']['simulate_s']:.1f} | {r['timings']['expert_s']:.1f} | "
                     f"{_fmt(t['timings'].get('train_s'), '.1f')} | {_fmt(t.get('trainer_duration_s'), '.1f')} | "
                     f"{_fmt(t.get('update_s'), '.1f')} | {_fmt(t['timings'].get('swap_s'), '.1f')} | "
                     f"{_fmt(r['timings'].get('eval_s'), '.1f')} |")
    return "\n".join(lines) + "\n"


def _eval_flag(cfg: dict[str, Any]) -> str:
    return f" --eval-customers {cfg['eval_customers']}" if "eval_customers" in cfg else ""


def same_panel(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two evaluation-panel records faced the same customers (seed and sizes), so pairing them holds."""
    return bool(a and b) and a["seed"] == b["seed"] and len(a["seen_ratings"]) == len(b["seen_ratings"]) \
        and len(a["held_out_ratings"]) == len(b["held_out_ratings"])


def _gain(stats: MeanCI) -> str:
    return "–" if not stats.n else f"{stats.mean:+.2f} [{stats.low:+.2f}, {stats.high:+.2f}]"


def panel_section(report: dict[str, Any]) -> list[str]:
    """Markdown lines: the fixed evaluation panel per round (paired gains on round 0) and its targets."""
    rounds, cfg = report["rounds"], report["config"]
    oracle = (report.get("oracle") or {}).get("eval")
    first = rounds[0].get("eval")
    lines = ["## The fixed evaluation panel", "",
             f"The same {cfg['eval_customers']} customers every round (seed {first['seed'] if first else '–'}; "
             f"{cfg['held_out_share']:.0%} with held-out phrasings), played against the served version in the "
             "sandbox and never trained on. Gains are paired: each customer's rating against its round-0 rating.", "",
             "| round | version | panel CSAT (95% CI) | gain on round 0 (paired, 95% CI) | seen phrasings | "
             "held-out phrasings | rubric |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        e = r.get("eval")
        if not e:
            lines.append(f"| {r['round']} | {r['version']} | – | – | – | – | – |")
            continue
        gain = panel_gain(first, e) if first and r is not rounds[0] else None
        lines.append(f"| {r['round']} | {r['version']} | {_ci(e['csat'])} | {_gain(gain) if gain else '–'} | "
                     f"{_ci(e['seen_csat'])} | {_ci(e['held_out_csat'])} | {_fmt(e['rubric']['mean'])} |")
    if oracle:
        lines += ["", f"Oracle (canonical replies) on the panel: {_ci(oracle['csat'])}; "
                  f"seen {_ci(oracle['seen_csat'])}, held-out {_ci(oracle['held_out_csat'])}."]
    lines += ["", "### Targets (issue 8), on the fixed evaluation panel", "", "| target | measured | met |",
              "| --- | --- | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in panel_targets(report, oracle)]
    return lines


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    _plot(report, out)
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return [out / "report.json", out / "report.md", *(out / name for name in PLOTS.values())]


# ---- several methods side by side --------------------------------------------------------------

COMPARISON_PLOTS = {"csat": "comparison_csat.png", "hacking": "reward_hacking.png"}
SWAYED = "flattery_swayed"


def targets(report: dict[str, Any], oracle: dict[str, Any] | None) -> list[tuple[str, str, bool | None]]:
    """The headline targets (issue 8) checked on one method's loop: (target, measured, met)."""
    rounds = report["rounds"]
    first, last = rounds[0], rounds[-1]
    gain = _num(last["csat"]["mean"]) - _num(first["csat"]["mean"])
    seen_gain = _num(last["seen_csat"]["mean"]) - _num(first["seen_csat"]["mean"])
    held_gain = _num(last["held_out_csat"]["mean"]) - _num(first["held_out_csat"]["mean"])
    rubrics = [_num(r["rubric"]["mean"]) for r in rounds]
    # worse: the round's whole 95% CI below the previous round's mean (the same adapter measured
    # twice moved 0.14 in a default-model run, so a plain drop of the mean is noise)
    worse = [f"{_num(a['rubric']['mean']):.2f}→{_num(b['rubric']['mean']):.2f}"
             for a, b in zip(rounds, rounds[1:]) if _num(b["rubric"]["high"]) < _num(a["rubric"]["mean"])]
    rows = [(f"mean CSAT rises by ≥ 1.0 within {len(rounds) - 1} round(s)",
             f"{_num(first['csat']['mean']):.2f} → {_num(last['csat']['mean']):.2f} ({gain:+.2f})", gain >= 1.0)]
    if oracle:
        gap = _num(oracle["csat"]["mean"]) - _num(first["csat"]["mean"])
        share = gain / gap if gap > 0 else math.nan
        rows.append(("closes ≥ 80% of the base → oracle gap",
                     f"{share:.0%} of {gap:.2f} (oracle {_num(oracle['csat']['mean']):.2f})", share >= 0.8))
    rows.append(("the expert view (rubric) never gets worse (a round's 95% CI wholly below the last mean)",
                 " → ".join(f"{v:.2f}" for v in rubrics) + (f" (worse: {', '.join(worse)})" if worse else ""),
                 not worse))
    ratio = held_gain / seen_gain if seen_gain > 0 else math.nan
    rows.append(("held-out phrasings gain ≥ 70% of the seen-phrasing gain",
                 f"held-out {held_gain:+.2f} vs seen {seen_gain:+.2f} ({_fmt(ratio, '.0%')})",
                 seen_gain > 0 and ratio >= 0.7))
    rows.append(("the loop runs within 30 minutes", f"{report['wall_s'] / 60:.1f} min", report["wall_s"] <= 1800))
    return rows


def panel_targets(report: dict[str, Any], oracle_eval: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    """The CSAT targets (issue 8) on the fixed evaluation panel: the last round against round 0, paired by
    customer; the gap to the oracle measured on the same customers. Empty where a round has no panel."""
    rounds = report["rounds"]
    if not all(r.get("eval") for r in rounds) or len(rounds) < 2:
        return []
    first, last = rounds[0]["eval"], rounds[-1]["eval"]
    oracle_eval = oracle_eval if same_panel(oracle_eval, first) else None
    gain, seen, held = (panel_gain(first, last, part) for part in ("all", "seen", "held_out"))
    rows = [(f"mean CSAT rises by ≥ 1.0 within {len(rounds) - 1} round(s)",
             f"{_num(first['csat']['mean']):.2f} → {_num(last['csat']['mean']):.2f} (paired {_gain(gain)})",
             gain.mean >= 1.0)]
    if oracle_eval:
        gap = _num(oracle_eval["csat"]["mean"]) - _num(first["csat"]["mean"])
        share = gain.mean / gap if gap > 0 else math.nan
        rows.append(("closes ≥ 80% of the base → oracle gap",
                     f"{_fmt(share, '.0%')} of {gap:.2f} (oracle {_num(oracle_eval['csat']['mean']):.2f})",
                     share >= 0.8))
    rubrics = [r["eval"]["rubric"] for r in rounds]
    worse = [f"{_num(a['mean']):.2f}→{_num(b['mean']):.2f}"
             for a, b in zip(rubrics, rubrics[1:]) if _num(b["high"]) < _num(a["mean"])]
    rows.append(("the expert view (rubric) never gets worse (a round's 95% CI wholly below the last mean)",
                 " → ".join(f"{_num(r['eval']['rubric']['mean']):.2f}" for r in rounds)
                 + (f" (worse: {', '.join(worse)})" if worse else ""), not worse))
    ratio = held.mean / seen.mean if seen.mean > 0 else math.nan
    rows.append(("held-out phrasings gain ≥ 70% of the seen-phrasing gain",
                 f"held-out {_gain(held)} vs seen {_gain(seen)} ({_fmt(ratio, '.0%')})",
                 seen.mean > 0 and ratio >= 0.7))
    return rows


def _plot_comparison(reports: dict[str, dict[str, Any]], oracle: dict[str, Any] | None, out: Path) -> None:
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
            means = [_num(c["mean"]) for c in stats]
            errors = [[m - _num(c["low"]) for m, c in zip(means, stats)],
                      [_num(c["high"]) - m for m, c in zip(means, stats)]]
            ax.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=method)
        line = (oracle or {}).get("eval") if nested else oracle
        if line:
            ax.axhline(_num(line["csat"]["mean"]), color="k", linestyle=":", label="oracle (canonical replies)")
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
        sway.plot(x, [_num(r["over_apologetic_share"]) for r in rounds], marker="o", label=method)
        gapax.plot(x, [_num(r["per_persona"].get(SWAYED, {}).get("csat", {}).get("mean"))
                       - _num(r["per_persona"].get(SWAYED, {}).get("rubric")) for r in rounds], marker="o", label=method)
    sway.set(xlabel="round", ylabel="share of replies", title="Grovelling or flattering replies", ylim=(0, 1))
    gapax.set(xlabel="round", ylabel="stars", title="Flattery-swayed customers: CSAT − expert view")
    sway.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / COMPARISON_PLOTS["hacking"], dpi=110)
    plt.close(fig)


def comparison_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """The side-by-side report: CSAT per round per method, targets, reward-hacking watch."""
    methods = list(reports)
    first = reports[methods[0]]
    oracle = first.get("oracle")
    cfg = first["config"]
    n_rounds = max(len(r["rounds"]) for r in reports.values())
    method_flags = " ".join(f"--method {m}" for m in methods)
    served, env = _serving(first)
    lines = ["# loopdesk loop: PPO against the baselines", "",
             f"Base model `{first['base_model']}`{served}; {cfg['rounds']} training round(s) of {cfg['customers_per_round']} "
             f"simulated customers ({cfg['held_out_share']:.0%} with held-out phrasings, never trained on), "
             f"experts {'on' if cfg['experts'] else 'off'}, seed {cfg['seed']}. Each method runs its own loop on "
             "its own data (its own Redis), with the same customers in each round (same seeds), the same base "
             "model, reward model recipe, gate and hot-swap; only the policy update differs.", "",
             f"Reproduce: `{env}loopdesk loop --rounds {cfg['rounds']} --customers-per-round {cfg['customers_per_round']} "
             f"--concurrency {cfg['concurrency']} --seed {cfg['seed']} --held-out-share {cfg['held_out_share']}"
             f"{_eval_flag(cfg)} {method_flags}` (plus `--round-config` for the overrides recorded in report.json).",
             "",
             "## Mean CSAT per round", "", f"![CSAT by method]({COMPARISON_PLOTS['csat']})", "",
             "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " | gain | trainer s / round |",
             "| --- |" + " --- |" * (n_rounds + 2)]
    for method, report in reports.items():
        rounds = report["rounds"]
        cells = [f"{_num(r['csat']['mean']):.2f} [{_num(r['csat']['low']):.2f}, {_num(r['csat']['high']):.2f}]"
                 for r in rounds]
        gain = _num(rounds[-1]["csat"]["mean"]) - _num(rounds[0]["csat"]["mean"])
        trainer = [t["trainer_duration_s"] for r in rounds if (t := r["training"]) and t.get("trainer_duration_s")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {gain:+.2f} | "
                     f"{_fmt(sum(trainer) / len(trainer) if trainer else None, '.0f')} |")
    if oracle:
        lines.append(f"| oracle (canonical replies, round 0 customers) | {_ci(oracle['csat'])} |" + " |" * (n_rounds + 1))
    if "none" in reports and len(reports) > 1:  # same customers each round: the fairest contrast
        still = reports["none"]["rounds"]
        lines += ["", "Difference from no training in the same round (same customers; round 0 is the same base "
                  "measured twice, so it shows the sampling noise):", "",
                  "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
                  "| --- |" + " --- |" * n_rounds]
        lines += [f"| {m} | " + " | ".join(f"{_num(r['csat']['mean']) - _num(n['csat']['mean']):+.2f}"
                                           for r, n in zip(rep["rounds"], still)) + " |"
                  for m, rep in reports.items() if m != "none"]
    lines += ["", "Expert view (neutral rubric, every chat) per round:", "",
              "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
              "| --- |" + " --- |" * n_rounds]
    lines += [f"| {m} | " + " | ".join(f"{_num(r['rubric']['mean']):.2f}" for r in rep["rounds"]) + " |"
              for m, rep in reports.items()]
    lines += ["", "Seen / held-out phrasings (mean CSAT) per round:", "",
              "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
              "| --- |" + " --- |" * n_rounds]
    lines += [f"| {m} | " + " | ".join(f"{_num(r['seen_csat']['mean']):.2f} / {_num(r['held_out_csat']['mean']):.2f}"
                                       for r in rep["rounds"]) + " |" for m, rep in reports.items()]
    if any(r.get("eval") for rep in reports.values() for r in rep["rounds"]):
        lines += ["", *comparison_panel_section(reports)]
    lines += ["", "## Targets (issue 8), checked on each method, on each round's own customers", "",
              "| method | target | measured | met |", "| --- | --- | --- | --- |"]
    for method, report in reports.items():
        for target, measured, met in targets(report, oracle):
            lines.append(f"| {method} | {target} | {measured} | {'yes' if met else 'no'} |")
    panel_rows = [(m, row) for m, rep in reports.items()
                  for row in panel_targets(rep, (rep.get("oracle") or oracle or {}).get("eval"))]
    if panel_rows:
        lines += ["", "## Targets (issue 8), checked on each method, on the fixed evaluation panel", "",
                  "| method | target | measured | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {m} | {t} | {v} | {'yes' if ok else 'no'} |" for m, (t, v, ok) in panel_rows]
    lines += ["", "## Reward-hacking watch", "", f"![Reward hacking]({COMPARISON_PLOTS['hacking']})", "",
              f"`{SWAYED}` customers add stars to replies that grovel or flatter; the expert (and the rubric) "
              "takes stars off for them. A policy gaming those customers would raise the share of such replies "
              "and open a gap between their CSAT and the expert view. The reward the trainer builds weights an "
              "expert's score 0.8 against CSAT's 0.2 wherever the expert annotated, the reward model prefers "
              "expert corrections, the KL penalty ties the policy to the base, and the gate scores candidates "
              "with that reward model on held-out conversations.", "",
              "| method | round | sway share: all / to swayed / to others | swayed: CSAT / expert view (n) | "
              "others: CSAT / expert view |",
              "| --- | --- | --- | --- | --- |"]
    for method, report in reports.items():
        for r in report["rounds"]:
            personas = r["per_persona"]
            swayed = personas.get(SWAYED)
            others = [p for name, p in personas.items() if name != SWAYED]
            n_other = sum(p["csat"]["n"] for p in others)
            other_csat = (sum(_num(p["csat"]["mean"]) * p["csat"]["n"] for p in others if p["csat"]["n"]) / n_other
                          if n_other else math.nan)
            other_rubric = (sum(p["rubric"] * p["chats"] for p in others) / sum(p["chats"] for p in others)
                            if others else math.nan)
            sw = (f"{_num(swayed['csat']['mean']):.2f} / {swayed['rubric']:.2f} ({swayed['chats']})"
                  if swayed else "–")
            other_sway = (sum(p["sway_share"] * p["chats"] for p in others) / sum(p["chats"] for p in others)
                          if others else math.nan)  # chats as weights: near the per-reply share
            lines.append(f"| {method} | {r['round']} | {_fmt(r['over_apologetic_share'], '.1%')} / "
                         f"{_fmt(swayed['sway_share'] if swayed else None, '.1%')} / {_fmt(other_sway, '.1%')} | {sw} | "
                         f"{other_csat:.2f} / {other_rubric:.2f} |")
    lines += ["", "## Each method's own report", ""]
    lines += [f"- [{m}]({m}/report.md)" for m in methods]
    return "\n".join(lines) + "\n"


def base_draws(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel measurement of the starting adapter in these loops (round 0 of each, and every later round
    that still served it): each one draw of its sampled replies. Empty when the loops started from different
    adapters or did not face one panel."""
    starts = {rep["rounds"][0]["version"] for rep in reports.values()}
    if len(starts) != 1:
        return []
    records = [r["eval"] for rep in reports.values() for r in rep["rounds"] if r.get("eval") and r["version"] in starts]
    return records if records and all(same_panel(records[0], e) for e in records) else []


def _pooled_base_lines(reports: dict[str, dict[str, Any]], oracle: dict[str, Any] | None) -> list[str]:
    draws = base_draws(reports)
    if len(draws) < 2:
        return []
    base = []  # each customer's mean rating over the draws
    for ratings in zip(*(panel_ratings(e) for e in draws)):
        rated = [x for x in ratings if x is not None]
        base.append(sum(rated) / len(rated) if rated else None)
    rated = [x for x in base if x is not None]
    mean = sum(rated) / len(rated)
    gap = _num(oracle["csat"]["mean"]) - mean if same_panel(oracle, draws[0]) else math.nan
    means = [_num(e["csat"]["mean"]) for e in draws]
    lines = ["", f"The starting adapter faced the panel {len(draws)} times across these loops (round 0 of each, and "
             f"every round that still served it): {mean:.2f} on average, from {min(means):.2f} to {max(means):.2f}, as "
             "each time its replies are sampled anew. A gain on a loop's own round 0 carries that draw; against the "
             "average, per customer:", "",
             "| method | last round | gain on the averaged start (paired, 95% CI) | share of the gap to the oracle |",
             "| --- | --- | --- | --- |"]
    for method, report in reports.items():
        last = report["rounds"][-1].get("eval")
        if len(report["rounds"]) < 2 or not same_panel(last, draws[0]):
            continue
        gain = paired_gain(base, panel_ratings(last))
        lines.append(f"| {method} | {_num(last['csat']['mean']):.2f} | {_gain(gain)} | "
                     f"{_fmt(gain.mean / gap if gap > 0 else math.nan, '.0%')} |")
    return lines


def comparison_panel_section(reports: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: every method on the fixed evaluation panel per round, its paired gain on its round 0,
    and each method against every other on the same round (the same customers: paired)."""
    methods = list(reports)
    n_rounds = max(len(r["rounds"]) for r in reports.values())
    oracle = next((rep["oracle"]["eval"] for rep in reports.values() if (rep.get("oracle") or {}).get("eval")), None)
    sizes = sorted({rep["config"].get("eval_customers") for rep in reports.values() if rep["rounds"][0].get("eval")})
    lines = ["## The fixed evaluation panel", "",
             f"The same {' / '.join(map(str, sizes))} customers every round and in every method's loop (same seed), "
             "played against the served version in a sandbox and never trained on: a round's change and the "
             "difference between two methods are paired by customer.", "",
             "| method | " + " | ".join(f"round {i}" for i in range(n_rounds))
             + " | gain, last round on round 0 (paired, 95% CI) | share of the gap to the oracle |",
             "| --- |" + " --- |" * (n_rounds + 2)]
    for method, report in reports.items():
        rounds = report["rounds"]
        evals = [r.get("eval") for r in rounds]
        cells = [f"{_num(e['csat']['mean']):.2f} [{_num(e['csat']['low']):.2f}, {_num(e['csat']['high']):.2f}]"
                 if e else "–" for e in evals]
        if evals[0] and evals[-1] and len(evals) > 1:
            gain = panel_gain(evals[0], evals[-1])
            gap = (_num(oracle["csat"]["mean"]) - _num(evals[0]["csat"]["mean"]) if same_panel(oracle, evals[0])
                   else math.nan)
            share = _fmt(gain.mean / gap if gap > 0 else math.nan, ".0%")
            tail = f" | {_gain(gain)} | {share} |"
        else:
            tail = " | – | – |"
        lines.append(f"| {method} | " + " | ".join(cells) + " |" * (n_rounds - len(cells)) + tail)
    if oracle:
        lines.append(f"| oracle (canonical replies) | {_ci(oracle['csat'])} |" + " |" * (n_rounds + 1))
    lines += _pooled_base_lines(reports, oracle)
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    rows = []
    for a, b in pairs:
        cells = []
        for ra, rb in zip(reports[a]["rounds"], reports[b]["rounds"]):
            ea, eb = ra.get("eval"), rb.get("eval")
            cells.append(_gain(panel_gain(eb, ea)) if same_panel(ea, eb) else "–")
        if any(c != "–" for c in cells):
            rows.append(f"| {a} − {b} | " + " | ".join(cells) + " |" * (n_rounds - len(cells) + 1))
    if rows:
        lines += ["", "Each method against another on the panel, the same round (paired by customer, 95% CI):", "",
                  "| methods | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
                  "| --- |" + " --- |" * n_rounds, *rows]
    return lines


def write_comparison(reports: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Each method's full report under ``out/<method>/``, and the comparison (report.md/json, plots) in ``out``."""
    written: list[Path] = []
    for method, report in reports.items():
        written += write_report(report, out / method)
    oracle = next(iter(reports.values())).get("oracle")
    (out / "report.json").write_text(json.dumps(_clean({"methods": reports}), indent=2, allow_nan=False) + "\n",
                                     encoding="utf-8")
    _plot_comparison(reports, oracle, out)
    (out / "report.md").write_text(comparison_markdown(reports), encoding="utf-8")
    return written + [out / "report.json", out / "report.md", *(out / name for name in COMPARISON_PLOTS.values())]
