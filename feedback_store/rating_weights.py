"""How much each stored rating counts when loopdesk estimates an adapter version's CSAT: the one rule
the canary decision (``trainer.canary``), ``GET /metrics`` and the operator console share.

A rated conversation's weight is the product of three factors, over the set of conversations
considered (the canary's two arms since it started; the versions shown over the window shown):

1. **stored**: ``Conversation.csat_weight``, 0 for a rating beyond the per-client cap
   (``feedback_store.ratings``), else 1.
2. **client**: 1 / n, n being the client's ratings of stored weight 1 in the set: every client
   weighs 1 in total, however many conversations it rated. The client is ``Conversation.rater``;
   a rating without one is a client of its own.
3. **burst**: per adapter version, the ratings fall into windows of ``window_s`` seconds of
   rating time (aligned to the epoch). No window may carry more than ``share`` of the version's
   total weight: with ``W_b`` a window's weight after 1 and 2, every window heavier than the cap
   ``C`` is scaled down to ``C``, where ``C = share · Σ_b min(W_b, C)``. With fewer than
   ``1 / share`` windows no such ``C`` exists; every window is then scaled down to the lightest
   one's weight (all windows weigh the same).

From the weights: the **weighted mean**; the **weighted standard deviation**
``sqrt(Σ w (x - m)² / Σ w · n_eff / (n_eff - 1))``; and **Kish's effective sample size** over
clients, ``n_eff = (Σ_c W_c)² / Σ_c W_c²`` with ``W_c`` a client's summed weight. Worked cases:
30 ratings from one client weigh 1/30 each, and n_eff = 1; 60 clients rating once each plus that
client: n_eff = 61² / 61 = 61. Equal weights give the plain mean, standard deviation and n.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from feedback_store.records import Conversation


@dataclass(frozen=True)
class WeightRule:
    """The burst part of the rule (``Settings.csat_burst_window_s`` and ``csat_burst_share``)."""

    window_s: float = 300.0
    share: float = 0.02

    def __post_init__(self) -> None:
        if self.window_s <= 0 or not 0 < self.share <= 1:
            raise ValueError(f"the burst window must be positive and the share within (0, 1]; "
                             f"got {self.window_s} s and {self.share}")

    @classmethod
    def of(cls, settings) -> "WeightRule":
        """The rule the settings name."""
        return cls(settings.csat_burst_window_s, settings.csat_burst_share)

    @property
    def min_windows(self) -> int:
        """Fewest windows in which no window exceeds ``share`` of the weight."""
        return math.ceil(1 / self.share - 1e-9)

    def window(self, conv: Conversation) -> int:
        """The burst window a rating falls into."""
        return math.floor((conv.rated_at if conv.rated_at is not None else conv.created_at) / self.window_s)


def client_of(conv: Conversation) -> str:
    """Who counts as one client for the weights: the rater key, or the conversation alone."""
    return conv.rater or f"conversation:{conv.id}"


def window_cap(weights: Sequence[float], share: float) -> float | None:
    """The cap ``C = share · Σ min(W, C)`` on window weights ``weights``; None when no window exceeds
    ``share`` of the total; the lightest weight when there are too few windows for such a ``C``."""
    total = sum(weights)
    if not weights or max(weights) <= share * total:
        return None
    ordered = sorted(weights)
    below = 0.0
    for j in range(1, len(ordered)):  # ordered[:j] stay under C, ordered[j:] are capped
        below += ordered[j - 1]
        free = 1 - share * (len(ordered) - j)
        if free > 0:
            cap = share * below / free
            if ordered[j - 1] - 1e-12 <= cap <= ordered[j] + 1e-12:
                return cap
    return ordered[0]


def rating_weights(conversations: Iterable[Conversation], rule: WeightRule) -> dict[str, float]:
    """Conversation id → weight, for every rated conversation given (the rule in the module docstring)."""
    rated = [c for c in conversations if c.csat is not None]
    per_client: dict[str, int] = defaultdict(int)
    for conv in rated:
        if conv.csat_weight > 0:
            per_client[client_of(conv)] += 1
    weights = {c.id: c.csat_weight / per_client[client_of(c)] if c.csat_weight > 0 else 0.0 for c in rated}
    windows: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for conv in rated:
        if weights[conv.id] > 0:
            windows[conv.adapter_version][rule.window(conv)].append(conv.id)
    for by_window in windows.values():
        loads = {b: sum(weights[i] for i in ids) for b, ids in by_window.items()}
        cap = window_cap(list(loads.values()), rule.share)
        if cap is None:
            continue
        for b, ids in by_window.items():
            if loads[b] > cap:
                for conv_id in ids:
                    weights[conv_id] *= cap / loads[b]
    return weights


@dataclass(frozen=True)
class CsatStats:
    """The weighted CSAT of a set of rated conversations."""

    ratings: int  # rated conversations
    counted: int  # of them with a weight above 0
    clients: int  # distinct clients among the counted
    windows: int  # distinct burst windows among the counted
    mean: float | None  # weighted mean
    sd: float | None  # weighted standard deviation (None below an effective 2 ratings)
    n_eff: float  # Kish's effective sample size over clients
    unweighted_mean: float | None  # every stored rating with weight 1, as counted before weights

    @property
    def se(self) -> float | None:
        """Standard error of the weighted mean: sd / sqrt(n_eff)."""
        return None if self.sd is None else self.sd / math.sqrt(self.n_eff)


def csat_stats(conversations: Iterable[Conversation], weights: dict[str, float], rule: WeightRule) -> CsatStats:
    """The weighted CSAT of the rated ``conversations`` under ``weights`` (from ``rating_weights``)."""
    rated = [c for c in conversations if c.csat is not None]
    counted = [c for c in rated if weights.get(c.id, 0.0) > 0]
    unweighted = sum(c.csat for c in rated) / len(rated) if rated else None
    if not counted:
        return CsatStats(len(rated), 0, 0, 0, None, None, 0.0, unweighted)
    by_client: dict[str, float] = defaultdict(float)
    for conv in counted:
        by_client[client_of(conv)] += weights[conv.id]
    total = sum(by_client.values())
    n_eff = total ** 2 / sum(w * w for w in by_client.values())
    mean = sum(weights[c.id] * c.csat for c in counted) / total
    sd = None
    if n_eff > 1 + 1e-9:
        spread = sum(weights[c.id] * (c.csat - mean) ** 2 for c in counted) / total
        sd = math.sqrt(spread * n_eff / (n_eff - 1))
    return CsatStats(len(rated), len(counted), len(by_client), len({rule.window(c) for c in counted}),
                     mean, sd, n_eff, unweighted)
