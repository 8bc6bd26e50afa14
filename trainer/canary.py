"""The live canary decision: promote the canary, roll it back, or wait for more ratings.

Data: CSAT (1–5) of rated conversations pinned to the canary and to the active version, both
counted from the moment the canary started serving, so the two arms share the same period. Each
rating is weighted by ``feedback_store.rating_weights`` (over both arms together): a rating beyond
the per-client cap weighs 0, each client weighs 1 in total, and no burst window of rating time
carries more than ``Settings.csat_burst_share`` of an arm. So one client, or a burst from a few,
cannot decide: 30 ratings from one client count as one client's worth (Kish n_eff 1).

Test: the difference of the arms' **weighted means**, ``z = (m_canary - m_active) / sqrt(sd_c² / n_c +
sd_a² / n_a)`` with each arm's weighted standard deviation and Kish effective sample size ``n``
(normal approximation, as Welch's test at these sizes), **one-sided at α = 0.05**
(``GateConfig.canary_alpha``), each direction separately:

- an effective (Kish) ``canary_min_samples`` ratings lacking on either side → **wait**;
- either side's ratings spanning fewer than ``1 / csat_burst_share`` burst windows → **wait**;
- canary worse than active (p = Φ(z) < α) → **rollback** (the canary is rejected, the active
  version keeps serving);
- canary better (p = 1 − Φ(z) < α) → **promote**;
- otherwise **wait**, until the canary has an effective ``canary_max_samples`` ratings: then it is
  promoted, since it passed the offline gate and live data shows no significant harm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from feedback_store import FeedbackStore
from feedback_store.rating_weights import CsatStats, WeightRule, csat_stats, rating_weights
from feedback_store.records import Conversation

from trainer.config import GateConfig


@dataclass(frozen=True)
class CanaryDecision:
    """What to do with the canary and the statistics behind it (means weighted, n effective)."""

    action: str  # "promote" | "rollback" | "wait"
    reason: str
    n_canary: float
    n_active: float
    mean_canary: float | None
    mean_active: float | None
    p_worse: float | None
    p_better: float | None
    ratings_canary: int = 0
    ratings_active: int = 0
    unweighted_mean_canary: float | None = None
    unweighted_mean_active: float | None = None

    def metrics(self) -> dict[str, Any]:
        return {f"canary_{k}": v for k, v in asdict(self).items()}


def _normal_cdf(z: float) -> float:
    """P(Z < z) for a standard normal Z."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


def weighted_z_test(canary: CsatStats, active: CsatStats) -> tuple[float, float]:
    """One-sided p-values (canary worse, canary better) of the difference of the weighted means."""
    if canary.mean is None or active.mean is None:
        return 1.0, 1.0
    diff = canary.mean - active.mean
    se = math.sqrt(sum((s.sd or 0.0) ** 2 / s.n_eff for s in (canary, active)))
    if se == 0:
        return (0.0, 1.0) if diff < 0 else (1.0, 0.0) if diff > 0 else (1.0, 1.0)
    z = diff / se
    return _normal_cdf(z), _normal_cdf(-z)


def decide(canary: Sequence[Conversation], active: Sequence[Conversation], config: GateConfig,
           rule: WeightRule) -> CanaryDecision:
    """Apply the rule in the module docstring to the two arms' rated conversations."""
    weights = rating_weights([*canary, *active], rule)
    c, a = csat_stats(canary, weights, rule), csat_stats(active, weights, rule)
    stats = dict(n_canary=round(c.n_eff, 2), n_active=round(a.n_eff, 2), mean_canary=c.mean, mean_active=a.mean,
                 ratings_canary=c.ratings, ratings_active=a.ratings, unweighted_mean_canary=c.unweighted_mean,
                 unweighted_mean_active=a.unweighted_mean)
    if min(c.n_eff, a.n_eff) < config.canary_min_samples:
        return CanaryDecision("wait", f"need an effective {config.canary_min_samples} ratings on each side "
                              f"(Kish, over clients); have {c.n_eff:.1f} and {a.n_eff:.1f}",
                              p_worse=None, p_better=None, **stats)
    if min(c.windows, a.windows) < rule.min_windows:
        return CanaryDecision("wait", f"need ratings in {rule.min_windows} burst windows on each side; "
                              f"have {c.windows} and {a.windows}", p_worse=None, p_better=None, **stats)
    p_worse, p_better = weighted_z_test(c, a)
    stats |= {"p_worse": p_worse, "p_better": p_better}
    alpha = config.canary_alpha
    if p_worse < alpha:
        return CanaryDecision("rollback", f"live CSAT worse than active (weighted z-test p={p_worse:.4f} < {alpha})",
                              **stats)
    if p_better < alpha:
        return CanaryDecision("promote", f"live CSAT better than active (weighted z-test p={p_better:.4f} < {alpha})",
                              **stats)
    if c.n_eff >= config.canary_max_samples:
        return CanaryDecision("promote", f"an effective {c.n_eff:.0f} ratings and not worse than active "
                              f"(p={p_worse:.4f})", **stats)
    return CanaryDecision("wait", "no significant difference yet", **stats)


def arms(store: FeedbackStore, version: str) -> tuple[list[Conversation], list[Conversation]]:
    """The rated conversations of the canary ``version`` and of the active one since the canary started."""
    since = store.adapters.get(version).updated_at

    def rated(v: str) -> list[Conversation]:
        return [c for c in store.conversations.for_adapter(v, since=since) if c.csat is not None]

    return rated(version), rated(store.adapters.active())


def check_canary(store: FeedbackStore, config: GateConfig) -> CanaryDecision | None:
    """Decide on the current canary (None when there is none) and act: promote or reject it."""
    version = store.adapters.canary()
    if version is None:
        return None
    decision = decide(*arms(store, version), config, WeightRule.of(store.settings))
    store.adapters.update_metrics(version, decision.metrics())
    if decision.action == "promote":
        store.adapters.promote(version, decision.reason)
    elif decision.action == "rollback":
        store.adapters.reject(version, decision.reason)
    return decision
