"""The live canary decision on weighted ratings, checked against hand-worked cases: per-client
weights, the burst cap, Kish's effective sample size, the weighted z-test, and the store round trip."""

from __future__ import annotations

import math
import time

import pytest

from feedback_store import FeedbackStore
from feedback_store.rating_weights import WeightRule, csat_stats, rating_weights, window_cap
from feedback_store.records import AdapterVersion, Conversation
from tests.store_helpers import chat
from trainer.canary import check_canary, decide, weighted_z_test
from trainer.config import GateConfig

T0 = 1_800_000_000.0  # a rating time on a burst-window boundary (300 s)
RULE = WeightRule()  # 300 s windows, 2% share: 50 windows needed
ATTACKER = "a" * 32


def rated(scores: list[int], version: str = "v0002", rater: str = "", start: float = T0, spacing: float = 300.0,
          weight: float = 1.0, tag: str = "") -> list[Conversation]:
    """Rated conversation records, the i-th rated at ``start + i * spacing`` (one per window by default)."""
    return [Conversation(id=f"{tag or version}-{rater[:4] or 'own'}-{start:.0f}-{i}", token_hash="h",
                         adapter_version=version, created_at=start + i * spacing, updated_at=start + i * spacing,
                         rated_at=start + i * spacing, csat=score, rater=rater, csat_weight=weight)
            for i, score in enumerate(scores)]


def stats(convs: list[Conversation], rule: WeightRule = RULE):
    return csat_stats(convs, rating_weights(convs, rule), rule)


def test_thirty_ratings_from_one_client_count_as_one_clients_worth():
    flood = rated([5] * 30, rater=ATTACKER, spacing=1.0)
    weights = rating_weights(flood, RULE)
    assert list(weights.values()) == pytest.approx([1 / 30] * 30)
    alone = csat_stats(flood, weights, RULE)
    assert (alone.ratings, alone.clients, alone.n_eff, alone.mean) == (30, 1, pytest.approx(1.0), pytest.approx(5.0))
    # 60 customers rating once (3, 4, 3, 4, ...) and the flood of 1s: (60 · 3.5 + 1 · 1) / 61
    honest = rated([3, 4] * 30)
    attack = rated([1] * 30, rater=ATTACKER, start=T0 + 60 * 300, spacing=300.0, tag="attack")
    both = stats(honest + attack)
    assert both.mean == pytest.approx(211 / 61) and both.n_eff == pytest.approx(61.0)
    assert both.unweighted_mean == pytest.approx((60 * 3.5 + 30) / 90)


def test_kish_effective_n_counts_clients_by_their_summed_weight():
    # 29 clients once and one client ten times: each client weighs 1, so n_eff = 30² / 30 = 30
    convs = rated([4] * 29) + rated([2] * 10, rater=ATTACKER, start=T0 + 29 * 300, tag="repeat")
    s = stats(convs, WeightRule(share=1.0))  # no burst rule: 39 windows are too few for 2% each
    assert (s.clients, s.n_eff) == (30, pytest.approx(30.0))
    assert s.mean == pytest.approx((29 * 4 + 2) / 30)


def test_a_rating_beyond_the_client_cap_weighs_nothing():
    convs = rated([5, 1]) + rated([1], weight=0.0, start=T0 + 600, tag="capped")
    s = stats(convs)
    assert (s.ratings, s.counted, s.mean, s.unweighted_mean) == (3, 2, 3.0, pytest.approx(7 / 3))


def test_window_cap_solves_its_equation_or_evens_out_too_few_windows():
    assert window_cap([1.0] * 60, 0.02) is None  # 1 ≤ 0.02 · 60
    # 50 windows of 1 and one of 10: C = 0.02 · 50 / (1 - 0.02) = 1.0204, and C = 0.02 · (50 + C)
    cap = window_cap([1.0] * 50 + [10.0], 0.02)
    assert cap == pytest.approx(1 / 0.98) and cap == pytest.approx(0.02 * (50 + cap))
    assert window_cap([3.0, 1.0, 2.0], 0.02) == 1.0  # three windows cannot keep to 2% each: all weigh the lightest


def test_a_burst_of_twenty_clients_in_one_window_weighs_one_windows_share():
    honest = rated([3, 4] * 30)  # 60 windows of one rating
    burst = [c for i in range(20) for c in rated([1], rater=f"{i:032x}", start=T0 + 60 * 300 + i, tag=f"b{i}")]
    s = stats(honest + burst)
    cap = 0.02 * 60 / (1 - 0.02)  # the burst's window is capped at C = 1.2245, the others stay at 1
    assert s.mean == pytest.approx((60 * 3.5 + cap * 1) / (60 + cap))
    assert s.mean > 3.44 and s.unweighted_mean == pytest.approx(230 / 80)
    assert s.windows == 61 and s.n_eff == pytest.approx((60 + cap) ** 2 / (60 + 20 * (cap / 20) ** 2))


def test_weighted_z_test_matches_hand_computation():
    # canary [2, 4], active [3, 5]: means 3 and 4; weighted sd² = 1 · 2 / (2 - 1) = 2 each, n_eff 2
    # z = (3 - 4) / sqrt(2/2 + 2/2) = -0.7071: p(worse) = Φ(-0.7071) = 0.2398
    canary, active = stats(rated([2, 4])), stats(rated([3, 5], version="v0001"))
    assert canary.sd == pytest.approx(math.sqrt(2))
    p_worse, p_better = weighted_z_test(canary, active)
    assert p_worse == pytest.approx(0.2398, abs=1e-4) and p_better == pytest.approx(0.7602, abs=1e-4)
    assert weighted_z_test(stats(rated([4, 4])), stats(rated([4, 4], version="v0001"))) == (1.0, 1.0)


def test_canary_decision_waits_rolls_back_and_promotes():
    config, rule = GateConfig(canary_min_samples=20, canary_max_samples=60), WeightRule(share=1 / 30)
    active = lambda scores: rated(scores, version="v0001")  # noqa: E731
    assert decide(rated([5] * 10), active([1] * 10), config, rule).action == "wait"
    worse = decide(rated([1, 2, 2, 3] * 10), active([3, 4, 4, 5] * 10), config, rule)
    assert worse.action == "rollback" and worse.p_worse < 0.05
    assert decide(rated([4, 5, 5, 5] * 10), active([2, 3, 3, 4] * 10), config, rule).action == "promote"
    assert decide(rated([3, 4] * 15), active([4, 3] * 15), config, rule).reason == "no significant difference yet"
    assert decide(rated([3, 4] * 30), active([4, 3] * 30), config, rule).action == "promote"  # enough data, not worse


def test_one_client_cannot_force_a_promotion_or_reach_the_sample_rules():
    config = GateConfig(canary_min_samples=20, canary_max_samples=60)
    active = rated([3, 4] * 30, version="v0001")
    flood = rated([5] * 300, rater=ATTACKER, spacing=30.0)
    decision = decide(flood, active, config, RULE)
    assert decision.action == "wait" and "effective 20" in decision.reason and decision.n_canary == 1.0
    # against the same canary with honest ratings, its ratings still decide and the flood is one client among 61
    honest = rated([1, 2, 2, 3] * 15, start=T0 + 7)
    assert decide(honest + flood, active, config, RULE).action == "rollback"
    # counted as before (every rating its own client, weight 1, no burst rule) the flood promotes it
    unweighted = [c.model_copy(update={"rater": ""}) for c in honest + flood]
    assert decide(unweighted, active, config, WeightRule(share=1.0)).action == "promote"


def test_ratings_within_too_few_burst_windows_wait():
    config = GateConfig(canary_min_samples=20)
    decision = decide(rated([5] * 60, spacing=1.0), rated([1] * 60, version="v0001"), config, RULE)
    assert decision.action == "wait" and "50 burst windows" in decision.reason


def _register(store: FeedbackStore, version: str) -> None:
    now = time.time()
    store.adapters.register(AdapterVersion(version=version, path=f"/nowhere/{version}", sha256="0" * 64,
                                           base_model="m", created_at=now, updated_at=now))


def _rated_conversations(store: FeedbackStore, version: str, scores: list[int]) -> None:
    for score in scores:
        conv, token = chat(store, version)
        store.ratings.rate(conv.id, token, score)


@pytest.fixture
def unbursted(settings) -> FeedbackStore:
    """A store whose ratings all arrive within a second: without the burst rule (tested above) the
    arms' Kish n and means decide."""
    return FeedbackStore.from_settings(settings.replace(csat_burst_share=1.0), announce=False)


def test_live_canary_worse_than_active_is_rolled_back(unbursted):
    store = unbursted
    _register(store, "v0001")
    store.adapters.promote("v0001")
    _register(store, "v0002")
    store.adapters.send_to_canary("v0002")
    _rated_conversations(store, "v0001", [4, 5, 4, 5] * 5)
    _rated_conversations(store, "v0002", [1, 2, 2, 1] * 5)
    decision = check_canary(store, GateConfig(canary_min_samples=10))
    assert decision.action == "rollback"
    assert store.adapters.get("v0002").status == "rejected" and store.adapters.canary() is None
    assert store.adapters.active() == "v0001"
    metrics = store.adapters.get("v0002").metrics
    assert metrics["canary_n_canary"] == 20 and metrics["canary_ratings_canary"] == 20
    assert metrics["canary_mean_canary"] == pytest.approx(1.5)


def test_live_canary_better_than_base_is_promoted(unbursted):
    store = unbursted
    _register(store, "v0001")
    store.adapters.send_to_canary("v0001")
    _rated_conversations(store, "base", [2, 3, 2, 3] * 5)
    _rated_conversations(store, "v0001", [4, 5, 4, 5] * 5)
    assert check_canary(store, GateConfig(canary_min_samples=10)).action == "promote"
    assert store.adapters.active() == "v0001"
    assert check_canary(store, GateConfig()) is None


def test_the_live_decision_waits_for_ratings_spread_over_burst_windows(store):
    _register(store, "v0001")
    store.adapters.send_to_canary("v0001")
    _rated_conversations(store, "base", [2, 3, 2, 3] * 5)
    _rated_conversations(store, "v0001", [4, 5, 4, 5] * 5)
    decision = check_canary(store, GateConfig(canary_min_samples=10))
    assert decision.action == "wait" and "burst windows" in decision.reason
    assert store.adapters.canary() == "v0001"
