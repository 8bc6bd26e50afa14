"""The numbers behind the operator console's charts: CSAT per adapter version with 95% intervals,
and an adapter's metrics compared with the active one's. Drawing happens in ``static/charts.js``."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from feedback_store.records import Conversation

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; above that the normal 1.96.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
       2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
       2.052, 2.048, 2.045, 2.042)
BUCKETS = {"hour": 3600, "day": 86400}


def mean_ci(scores: list[int]) -> dict[str, Any]:
    """n, mean and the 95% t-interval of the mean (clipped to the 1-5 scale; none for n < 2)."""
    n = len(scores)
    mean = sum(scores) / n
    if n < 2:
        return {"n": n, "mean": mean, "lo": None, "hi": None}
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = (T95[n - 2] if n - 1 <= len(T95) else 1.96) * sd / math.sqrt(n)
    return {"n": n, "mean": round(mean, 4), "lo": round(max(1.0, mean - half), 4),
            "hi": round(min(5.0, mean + half), 4)}


def csat_by_version(conversations: Iterable[Conversation], bucket_s: int) -> dict[str, Any]:
    """Rated conversations grouped by adapter version and time bucket (by start time, UTC).

    Returns ``{"series": [{"version", "points": [{"t", "n", "mean", "lo", "hi"}]}], "totals": {version: stats}}``.
    """
    buckets: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for conv in conversations:
        if conv.csat is not None:
            buckets[conv.adapter_version][int(conv.created_at // bucket_s) * bucket_s].append(conv.csat)
    series = [{"version": version, "points": [{"t": t, **mean_ci(by_time[t])} for t in sorted(by_time)]}
              for version, by_time in sorted(buckets.items())]
    totals = {version: mean_ci([s for scores in by_time.values() for s in scores])
              for version, by_time in buckets.items()}
    return {"series": series, "totals": totals}


def compare_metrics(metrics: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """``metrics - baseline`` for every numeric metric both have."""
    def numeric(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return {key: round(value - baseline[key], 6) for key, value in metrics.items()
            if numeric(value) and numeric(baseline.get(key))}
