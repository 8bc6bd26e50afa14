"""The numbers behind the operator console's charts: CSAT per adapter version with 95% intervals,
handoffs and resolutions per version, and an adapter's metrics compared with the active one's.
Drawing happens in ``static/charts.js``.

The CSAT shown is weighted as the canary decision weighs it (``feedback_store.rating_weights``:
capped ratings 0, each client 1 in total, bursts capped), with the effective sample size; the
plain mean of every stored rating is shown beside it as ``unweighted_mean``."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from feedback_store.rating_weights import CsatStats, WeightRule, csat_stats, rating_weights
from feedback_store.records import Conversation

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; above that the normal 1.96.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
       2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
       2.052, 2.048, 2.045, 2.042)
BUCKETS = {"hour": 3600, "day": 86400}
Z95 = 1.959964


def t95(n_eff: float) -> float:
    """Two-sided 95% Student-t quantile for an effective sample size (its whole degrees of freedom)."""
    df = math.floor(n_eff + 1e-9) - 1
    return T95[df - 1] if 1 <= df <= len(T95) else 1.96


def csat_summary(stats: CsatStats) -> dict[str, Any]:
    """What the console shows of a set's CSAT: ratings stored, the weighted mean with its 95% t-interval on the
    effective sample size (clipped to the 1-5 scale; none below an effective 2), n_eff, and the plain mean."""
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    lo = hi = None
    if stats.mean is not None and stats.se is not None:
        half = t95(stats.n_eff) * stats.se
        lo, hi = max(1.0, stats.mean - half), min(5.0, stats.mean + half)
    return {"n": stats.ratings, "n_eff": round(stats.n_eff, 2), "mean": rounded(stats.mean), "lo": rounded(lo),
            "hi": rounded(hi), "unweighted_mean": rounded(stats.unweighted_mean)}


def csat_by_version(conversations: Iterable[Conversation], bucket_s: int, rule: WeightRule) -> dict[str, Any]:
    """Rated conversations grouped by adapter version and time bucket (by start time, UTC), each rating
    weighted as the canary decision weighs it (``feedback_store.rating_weights``, over all the given ones).

    Returns ``{"series": [{"version", "points": [{"t", **csat_summary}]}], "totals": {version: csat_summary}}``.
    """
    rated = [c for c in conversations if c.csat is not None]
    weights = rating_weights(rated, rule)
    buckets: dict[str, dict[int, list[Conversation]]] = defaultdict(lambda: defaultdict(list))
    for conv in rated:
        buckets[conv.adapter_version][int(conv.created_at // bucket_s) * bucket_s].append(conv)
    series = [{"version": version,
               "points": [{"t": t, **csat_summary(csat_stats(by_time[t], weights, rule))} for t in sorted(by_time)]}
              for version, by_time in sorted(buckets.items())]
    totals = {version: csat_summary(csat_stats([c for convs in by_time.values() for c in convs], weights, rule))
              for version, by_time in buckets.items()}
    return {"series": series, "totals": totals}


def share_ci(share: float, n: float) -> dict[str, Any]:
    """A proportion with its 95% Wilson score interval (``n`` may be an effective sample size); none for n = 0."""
    if n <= 0:
        return {"n": 0, "rate": None, "lo": None, "hi": None}
    z2 = Z95 * Z95
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return {"n": round(n, 2), "rate": round(share, 4), "lo": round(max(0.0, centre - half), 4),
            "hi": round(min(1.0, centre + half), 4)}


def resolved_by_the_bot(conv: Conversation) -> bool:
    """Ended without a handoff and rated 4 or 5: the bot alone solved it, by the customer's account."""
    return conv.status == "ended" and not conv.handoffs and conv.csat is not None and conv.csat >= 4


def handoffs_by_version(conversations: Iterable[Conversation], rule: WeightRule) -> dict[str, dict[str, Any]]:
    """Per adapter version: the handoff rate (conversations handed to a person, or asking for one while
    nobody was available, over all of them), the resolution rate (``resolved_by_the_bot`` over every rated
    conversation, its ratings weighted as CSAT's, on their effective sample size) and CSAT apart for
    bot-only and handed-off conversations, each with its 95% interval."""
    given = list(conversations)
    rated_all = [c for c in given if c.csat is not None]
    weights = rating_weights(rated_all, rule)
    by_version: dict[str, list[Conversation]] = defaultdict(list)
    for conv in given:
        by_version[conv.adapter_version].append(conv)
    out = {}
    for version, convs in sorted(by_version.items()):
        rated = [c for c in convs if c.csat is not None]
        total = sum(weights[c.id] for c in rated)
        resolved = sum(weights[c.id] for c in rated if resolved_by_the_bot(c))
        n_eff = csat_stats(rated, weights, rule).n_eff
        handed_off = sum(1 for c in convs if c.handoffs)
        out[version] = {
            "conversations": len(convs), "handed_off": handed_off, "rated": len(rated),
            "handoff_rate": share_ci(handed_off / len(convs), len(convs)),
            "resolution_rate": share_ci(resolved / total if total else 0.0, n_eff if total else 0),
            "csat_bot_only": csat_summary(csat_stats([c for c in rated if not c.handoffs], weights, rule)),
            "csat_handed_off": csat_summary(csat_stats([c for c in rated if c.handoffs], weights, rule)),
        }
    return out


def compare_metrics(metrics: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """``metrics - baseline`` for every numeric metric both have."""
    def numeric(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return {key: round(value - baseline[key], 6) for key, value in metrics.items()
            if numeric(value) and numeric(baseline.get(key))}
