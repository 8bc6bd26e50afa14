"""How the loop's reports read and print recorded values: a number that may be missing, a 95% CI
or a paired gain as a Markdown cell, and a JSON-safe copy of a report (NaN becomes null)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.simulate import MeanCI


def num(value: Any) -> float:
    """A recorded number as a float; missing (None) is NaN."""
    return math.nan if value is None else float(value)


def fmt(value: Any, spec: str = ".2f") -> str:
    """A value in a Markdown cell: "–" when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def ci_cell(stats: dict[str, Any]) -> str:
    """A recorded mean with its 95% CI and sample size; "–" with no sample."""
    if not stats["n"]:
        return "–"
    return f"{stats['mean']:.2f} [{stats['low']:.2f}, {stats['high']:.2f}] (n={stats['n']})"


def gain_cell(stats: MeanCI) -> str:
    """A paired gain with its 95% CI; "–" with no pair."""
    return "–" if not stats.n else f"{stats.mean:+.2f} [{stats.low:+.2f}, {stats.high:+.2f}]"


def intents(rounds: list[dict[str, Any]]) -> list[str]:
    """Every intent measured in these rounds, sorted."""
    return sorted({intent for r in rounds for intent in r["per_intent"]})


def json_safe(value: Any) -> Any:
    """JSON-safe copy: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
