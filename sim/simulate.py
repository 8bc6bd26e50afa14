"""Running simulated customers against a bot, and the statistics of what they said.

``run_customers`` plays N customers with C concurrent chats (a thread each) against a base
URL and returns their ``ChatResult``s; ``summarize`` turns those into mean CSAT with a 95%
percentile-bootstrap confidence interval, per intent, per adapter version and per persona,
the share of chats left unrated, the mean hidden-rubric score (the expert's view), and the
handoffs (``HandoffStats``).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from sim.client import ChatClient
from sim.company import Company
from sim.customers import ChatResult, CustomerConfig, SimulatedCustomer, make_customers
from sim.knowledge import LiveFacts

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class MeanCI:
    """A sample mean with its 95% percentile-bootstrap confidence interval (NaN when empty)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


def mean_ci(values: list[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> MeanCI:
    """Mean and 95% percentile-bootstrap CI of ``values`` (``resamples`` resamples, fixed seed)."""
    if not values:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return MeanCI(float(data.mean()), float(low), float(high), len(data))


def paired_gain(before: list[float | None], after: list[float | None], seed: int = 0) -> MeanCI:
    """Mean per-customer change from ``before`` to ``after`` with its 95% bootstrap CI: the same customers in
    the same order, each pair counted where both ratings exist (an unrated or failed chat is None)."""
    if len(before) != len(after):
        raise ValueError(f"paired ratings need the same customers: {len(before)} before, {len(after)} after")
    return mean_ci([b - a for a, b in zip(before, after) if a is not None and b is not None], seed)


@dataclass(frozen=True)
class GroupStats:
    """CSAT (rated chats) and rubric score (all chats) of one group of chats."""

    csat: MeanCI
    rubric: float
    chats: int


@dataclass(frozen=True)
class HandoffStats:
    """How chats reached a person. ``handoff_rate``: share of chats the bot handed off (or, on a request,
    said that nobody is available). ``resolution_rate``: share of the rated chats that ended without a
    handoff and were rated 4 or more. ``unheeded_requests``: requests for a person the bot answered itself
    (it must hand off on every one)."""

    handoffs: int
    handoff_rate: float
    resolved: int
    resolution_rate: float
    person_requests: int
    unheeded_requests: int


def handoff_stats(results: list[ChatResult]) -> HandoffStats:
    """``HandoffStats`` of finished chats (NaN rates when there are none, or none rated)."""
    rated = [r for r in results if r.rating is not None]
    handoffs = sum(bool(r.handoff) for r in results)
    resolved = sum(not r.handoff and r.rating >= 4 for r in rated)
    return HandoffStats(handoffs=handoffs, handoff_rate=handoffs / len(results) if results else math.nan,
                        resolved=resolved, resolution_rate=resolved / len(rated) if rated else math.nan,
                        person_requests=sum(r.asked_person for r in results),
                        unheeded_requests=sum(r.unheeded for r in results))


@dataclass(frozen=True)
class Summary:
    """What a simulation run measured; ``rubric`` is the expert's view, ``csat`` the customers'."""

    chats: int
    errors: int
    unrated_share: float
    csat: MeanCI
    rubric: MeanCI
    per_intent: dict[str, GroupStats]
    per_version: dict[str, GroupStats]
    per_persona: dict[str, GroupStats]
    handoffs: HandoffStats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A human-readable report."""
        lines = [f"chats: {self.chats} ({self.errors} failed), unrated: {self.unrated_share:.0%}",
                 f"mean CSAT (95% bootstrap CI): {self.csat}",
                 f"mean rubric score, the expert view (95% bootstrap CI): {self.rubric}",
                 f"handed to a person: {self.handoffs.handoff_rate:.0%} ({self.handoffs.handoffs}); resolved "
                 f"without one, rated >= 4: {self.handoffs.resolution_rate:.0%} of the rated; requests for a person "
                 f"the bot did not hand off: {self.handoffs.unheeded_requests} of {self.handoffs.person_requests}"]
        for title, groups in (("adapter version", self.per_version), ("intent", self.per_intent),
                              ("persona", self.per_persona)):
            lines.append(f"by {title}:")
            lines += [f"  {name:22s} CSAT {g.csat}  rubric {g.rubric:.2f}" for name, g in sorted(groups.items())]
        return "\n".join(lines)


def _group(results: list[ChatResult], key: Callable[[ChatResult], str]) -> dict[str, GroupStats]:
    groups: dict[str, list[ChatResult]] = {}
    for result in results:
        groups.setdefault(key(result), []).append(result)
    return {name: GroupStats(mean_ci([r.rating for r in rs if r.rating is not None]),
                             float(np.mean([r.rubric for r in rs])), len(rs))
            for name, rs in groups.items()}


def summarize(results: list[ChatResult]) -> Summary:
    """Statistics of finished chats; failed chats are counted and otherwise left out."""
    done = [r for r in results if not r.error]
    ratings = [r.rating for r in done if r.rating is not None]
    return Summary(
        chats=len(results),
        errors=len(results) - len(done),
        unrated_share=(1 - len(ratings) / len(done)) if done else math.nan,
        csat=mean_ci(ratings),
        rubric=mean_ci([r.rubric for r in done]),
        per_intent=_group(done, lambda r: r.intent),
        per_version=_group(done, lambda r: r.adapter_version),
        per_persona=_group(done, lambda r: r.persona),
        handoffs=handoff_stats(done),
    )


def run_customers(base_url: str, company: Company, n: int, concurrency: int = 4,
                  config: CustomerConfig = CustomerConfig(), seed: int = 0,
                  progress: bool = True) -> list[ChatResult]:
    """Play ``n`` simulated customers against the bot at ``base_url``, ``concurrency`` at a time."""
    customers = make_customers(company, n, config, seed)
    local, clients, facts = threading.local(), [], LiveFacts()  # articles' facts read once per version

    def play(index: int) -> ChatResult:
        if not hasattr(local, "client"):  # one HTTP session per worker thread
            local.client = ChatClient(base_url, stream=config.stream)
            clients.append(local.client)
        return SimulatedCustomer(company, local.client, config, facts).chat(customers[index])

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
                tqdm(total=n, desc="customers", unit="chat", disable=not progress) as bar:
            results = []
            for result in pool.map(play, range(n)):
                results.append(result)
                bar.update()
        return results
    finally:
        for client in clients:
            client.close()
