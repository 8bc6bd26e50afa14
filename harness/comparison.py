"""Several methods' loops side by side: ``report.md`` and ``report.json`` over every method (each
method's own report beside it), CSAT per round, the fixed evaluation panel paired across methods,
the targets on each method, and the reward-hacking watch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.measure import panel_gain, panel_ratings
from harness.plots import COMPARISON_PLOTS, SWAYED, plot_comparison
from harness.report import (eval_flag, handoff_flags, panel_targets, same_panel, scope_flag, serving_note, targets,
                            write_report)
from harness.report_format import ci_cell, fmt, gain_cell, json_safe, num
from sim.simulate import paired_gain


def comparison_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """The side-by-side report: CSAT per round per method, targets, reward-hacking watch."""
    methods = list(reports)
    first = reports[methods[0]]
    oracle = first.get("oracle")
    cfg = first["config"]
    n_rounds = max(len(r["rounds"]) for r in reports.values())
    method_flags = " ".join(f"--method {m}" for m in methods)
    served, env = serving_note(first)
    lines = ["# loopdesk loop: PPO against the baselines", "",
             f"Base model `{first['base_model']}`{served}; {cfg['rounds']} training round(s) of {cfg['customers_per_round']} "
             f"simulated customers ({cfg['held_out_share']:.0%} with held-out phrasings, never trained on), "
             f"experts {'on' if cfg['experts'] else 'off'}, seed {cfg['seed']}. Each method runs its own loop on "
             "its own data (its own Redis), with the same customers in each round (same seeds), the same base "
             "model, reward model recipe, gate and hot-swap; only the policy update differs.", "",
             f"Reproduce: `{env}loopdesk loop --rounds {cfg['rounds']} --customers-per-round {cfg['customers_per_round']} "
             f"--concurrency {cfg['concurrency']} --seed {cfg['seed']} --held-out-share {cfg['held_out_share']}"
             f"{scope_flag(cfg)}{eval_flag(cfg)}{handoff_flags(cfg)} {method_flags}` "
             "(plus `--round-config` for the overrides recorded in report.json).",
             "",
             "## Mean CSAT per round", "", f"![CSAT by method]({COMPARISON_PLOTS['csat']})", "",
             "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " | gain | trainer s / round |",
             "| --- |" + " --- |" * (n_rounds + 2)]
    for method, report in reports.items():
        rounds = report["rounds"]
        cells = [f"{num(r['csat']['mean']):.2f} [{num(r['csat']['low']):.2f}, {num(r['csat']['high']):.2f}]"
                 for r in rounds]
        gain = num(rounds[-1]["csat"]["mean"]) - num(rounds[0]["csat"]["mean"])
        trainer = [t["trainer_duration_s"] for r in rounds if (t := r["training"]) and t.get("trainer_duration_s")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {gain:+.2f} | "
                     f"{fmt(sum(trainer) / len(trainer) if trainer else None, '.0f')} |")
    if oracle:
        lines.append(f"| oracle (canonical replies, round 0 customers) | {ci_cell(oracle['csat'])} |" + " |" * (n_rounds + 1))
    if "none" in reports and len(reports) > 1:  # same customers each round: the fairest contrast
        still = reports["none"]["rounds"]
        lines += ["", "Difference from no training in the same round (same customers; round 0 is the same base "
                  "measured twice, so it shows the sampling noise):", "",
                  "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
                  "| --- |" + " --- |" * n_rounds]
        lines += [f"| {m} | " + " | ".join(f"{num(r['csat']['mean']) - num(n['csat']['mean']):+.2f}"
                                           for r, n in zip(rep["rounds"], still)) + " |"
                  for m, rep in reports.items() if m != "none"]
    lines += ["", "Expert view (neutral rubric, every chat) per round:", "",
              "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
              "| --- |" + " --- |" * n_rounds]
    lines += [f"| {m} | " + " | ".join(f"{num(r['rubric']['mean']):.2f}" for r in rep["rounds"]) + " |"
              for m, rep in reports.items()]
    lines += ["", "Seen / held-out phrasings (mean CSAT) per round:", "",
              "| method | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " |",
              "| --- |" + " --- |" * n_rounds]
    lines += [f"| {m} | " + " | ".join(f"{num(r['seen_csat']['mean']):.2f} / {num(r['held_out_csat']['mean']):.2f}"
                                       for r in rep["rounds"]) + " |" for m, rep in reports.items()]
    if any(r.get("eval") for rep in reports.values() for r in rep["rounds"]):
        lines += ["", *comparison_panel_section(reports)]
    lines += ["", "## Targets, checked on each method, on each round's own customers", "",
              "| method | target | measured | met |", "| --- | --- | --- | --- |"]
    for method, report in reports.items():
        for target, measured, met in targets(report, oracle):
            lines.append(f"| {method} | {target} | {measured} | {'yes' if met else 'no'} |")
    panel_rows = [(m, row) for m, rep in reports.items()
                  for row in panel_targets(rep, (rep.get("oracle") or oracle or {}).get("eval"))]
    if panel_rows:
        lines += ["", "## Targets, checked on each method, on the fixed evaluation panel", "",
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
            other_csat = (sum(num(p["csat"]["mean"]) * p["csat"]["n"] for p in others if p["csat"]["n"]) / n_other
                          if n_other else math.nan)
            other_rubric = (sum(p["rubric"] * p["chats"] for p in others) / sum(p["chats"] for p in others)
                            if others else math.nan)
            sw = (f"{num(swayed['csat']['mean']):.2f} / {swayed['rubric']:.2f} ({swayed['chats']})"
                  if swayed else "–")
            other_sway = (sum(p["sway_share"] * p["chats"] for p in others) / sum(p["chats"] for p in others)
                          if others else math.nan)  # chats as weights: near the per-reply share
            lines.append(f"| {method} | {r['round']} | {fmt(r['over_apologetic_share'], '.1%')} / "
                         f"{fmt(swayed['sway_share'] if swayed else None, '.1%')} / {fmt(other_sway, '.1%')} | {sw} | "
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
    gap = num(oracle["csat"]["mean"]) - mean if same_panel(oracle, draws[0]) else math.nan
    means = [num(e["csat"]["mean"]) for e in draws]
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
        lines.append(f"| {method} | {num(last['csat']['mean']):.2f} | {gain_cell(gain)} | "
                     f"{fmt(gain.mean / gap if gap > 0 else math.nan, '.0%')} |")
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
        cells = [f"{num(e['csat']['mean']):.2f} [{num(e['csat']['low']):.2f}, {num(e['csat']['high']):.2f}]"
                 if e else "–" for e in evals]
        if evals[0] and evals[-1] and len(evals) > 1:
            gain = panel_gain(evals[0], evals[-1])
            gap = (num(oracle["csat"]["mean"]) - num(evals[0]["csat"]["mean"]) if same_panel(oracle, evals[0])
                   else math.nan)
            share = fmt(gain.mean / gap if gap > 0 else math.nan, ".0%")
            tail = f" | {gain_cell(gain)} | {share} |"
        else:
            tail = " | – | – |"
        lines.append(f"| {method} | " + " | ".join(cells) + " |" * (n_rounds - len(cells)) + tail)
    if oracle:
        lines.append(f"| oracle (canonical replies) | {ci_cell(oracle['csat'])} |" + " |" * (n_rounds + 1))
    lines += _pooled_base_lines(reports, oracle)
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    rows = []
    for a, b in pairs:
        cells = []
        for ra, rb in zip(reports[a]["rounds"], reports[b]["rounds"]):
            ea, eb = ra.get("eval"), rb.get("eval")
            cells.append(gain_cell(panel_gain(eb, ea)) if same_panel(ea, eb) else "–")
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
    (out / "report.json").write_text(json.dumps(json_safe({"methods": reports}), indent=2, allow_nan=False) + "\n",
                                     encoding="utf-8")
    plot_comparison(reports, oracle, out)
    (out / "report.md").write_text(comparison_markdown(reports), encoding="utf-8")
    return written + [out / "report.json", out / "report.md", *(out / name for name in COMPARISON_PLOTS.values())]
