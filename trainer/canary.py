"""The live canary decision: promote the canary, roll it back, or wait for more ratings.

Data: CSAT (1–5) of rated conversations pinned to the canary and to the active version, both
counted from the moment the canary started serving, so the two arms share the same period.

Test: the **Mann–Whitney U test** (CSAT is ordinal, so a rank test, not a t-test), normal
approximation with tie correction and continuity correction, **one-sided at α = 0.05**
(``GateConfig.canary_alpha``), each direction separately:

- fewer than ``canary_min_samples`` ratings on either side → **wait**;
- canary stochastically *worse* than active (p < α) → **rollback** (the canary is rejected,
  the active version keeps serving);
- canary stochastically *better* (p < α) → **promote**;
- otherwise **wait**, until the canary has ``canary_max_samples`` ratings: then it is promoted,
  since it passed the offline gate and live data shows no significant harm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from feedback_store import FeedbackStore

from trainer.config import GateConfig


@dataclass(frozen=True)
class CanaryDecision:
    """What to do with the canary and the statistics behind it."""

    action: str  # "promote" | "rollback" | "wait"
    reason: str
    n_canary: int
    n_active: int
    mean_canary: float | None
    mean_active: float | None
    p_worse: float | None
    p_better: float | None

    def metrics(self) -> dict[str, Any]:
        return {f"canary_{k}": v for k, v in asdict(self).items()}


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """One-sided p-values (x tends to be smaller than y, x tends to be larger) of the U test."""
    n1, n2 = len(x), len(y)
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks, ties, i = [0.0] * len(pooled), 0.0, 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        for k in range(i, j):
            ranks[k] = (i + j + 1) / 2  # mean of ranks i+1..j
        ties += (j - i) ** 3 - (j - i)
        i = j
    u1 = sum(r for r, (_, group) in zip(ranks, pooled) if group == 0) - n1 * (n1 + 1) / 2  # U = R₁ − n₁(n₁+1)/2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        return 1.0, 1.0
    mean = n1 * n2 / 2
    return _normal_sf((mean - u1 - 0.5) / sigma), _normal_sf((u1 - mean - 0.5) / sigma)


def decide(canary: Sequence[int], active: Sequence[int], config: GateConfig) -> CanaryDecision:
    """Apply the rule in the module docstring to the two arms' CSAT ratings."""
    def mean(v: Sequence[int]) -> float | None:
        return sum(v) / len(v) if v else None

    stats = dict(n_canary=len(canary), n_active=len(active), mean_canary=mean(canary), mean_active=mean(active))
    if min(len(canary), len(active)) < config.canary_min_samples:
        return CanaryDecision("wait", f"need {config.canary_min_samples} ratings on each side",
                              p_worse=None, p_better=None, **stats)
    p_worse, p_better = mann_whitney(canary, active)
    stats |= {"p_worse": p_worse, "p_better": p_better}
    alpha = config.canary_alpha
    if p_worse < alpha:
        return CanaryDecision("rollback", f"live CSAT worse than active (Mann-Whitney p={p_worse:.4f} < {alpha})", **stats)
    if p_better < alpha:
        return CanaryDecision("promote", f"live CSAT better than active (Mann-Whitney p={p_better:.4f} < {alpha})", **stats)
    if len(canary) >= config.canary_max_samples:
        return CanaryDecision("promote", f"{len(canary)} ratings and not worse than active (p={p_worse:.4f})", **stats)
    return CanaryDecision("wait", "no significant difference yet", **stats)


def check_canary(store: FeedbackStore, config: GateConfig) -> CanaryDecision | None:
    """Decide on the current canary (None when there is none) and act: promote or reject it."""
    version = store.adapters.canary()
    if version is None:
        return None
    since = store.adapters.get(version).updated_at
    active = store.adapters.active()

    def ratings(v: str) -> list[int]:
        return [c.csat for c in store.conversations.for_adapter(v, since=since) if c.csat is not None]

    decision = decide(ratings(version), ratings(active), config)
    store.adapters.update_metrics(version, decision.metrics())
    if decision.action == "promote":
        store.adapters.promote(version, decision.reason)
    elif decision.action == "rollback":
        store.adapters.reject(version, decision.reason)
    return decision
