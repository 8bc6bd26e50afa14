"""Benchmark: a rating flood against a live canary, counted the old way and by the weighted rule.

Honest simulated customers chat with the real app (Flask test client, the test-size engine, a real
embedded Redis) and rate the canary and the active version from realistic distributions (stars:
a normal latent satisfaction, sd 1.1, rounded and clipped to 1-5; the active version's around
3.6, the canary truly ~0.3 stars better or worse), ``n`` honest ratings on each side, their
times spread uniformly over a 24 h canary period. Then an attacker floods the canary: ``N`` fake
ratings from 1 or from 20 client addresses, each on a real conversation it chatted in first (the
app answers its zero-turn attempts with 409; they are counted), paced at the per-IP limit
(``Settings.rate_limit_per_ip``, 120/minute: one request every 0.5 s per address), the fakes
split evenly between the arms, 20 h into the period, each address rating its canary
conversations first (the per-client cap counts a client's first ratings). Against a better canary it vetoes (canary
1 star, active 5), against a worse one it forces a promotion (canary 5, active 1); at the
canary share of 0.1 it opens about ten conversations for each one pinned to the canary.

Baseline, "old": the counting before rating provenance, from the same data: every rating
weighs 1 as its own client (the attack's zero-turn attempts included, which the old app took),
no burst rule, the same test. "new": the stored weights (per-client cap), 1/n per client, the
burst cap and the Kish-n rules (``feedback_store.rating_weights``, ``trainer.canary``, default
settings); "clients only" is the new rule without its burst cap (``csat_burst_share`` 1).
Reported: the canary's CSAT estimate (the weighted mean; old: the plain mean)
without and with the attack, the shift, and the decision without and with it.

Clocks: the app runs on the wall clock, its rate limiter lifted as the harness lifts it for its
own bot (the attacker is paced on the simulated clock instead); the per-client cap's 24 h window
spans the whole run. Burst windows count rating time, so each rating's time on the simulated
timeline replaces its wall-clock ``rated_at`` in the records read back before deciding. The
honest phase serves the canary to half the new conversations, only so that fewer chats fill both
arms; the attack phase to the default 0.1.

Run:  python bench/rating_flood.py [--honest 60 150] [--fakes 300] [--addresses 1 20] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# bench/feedback_store.py would shadow the package of that name: keep bench/ off the import path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bot.app import create_app  # noqa: E402
from feedback_store import FeedbackStore  # noqa: E402
from feedback_store.rating_weights import WeightRule  # noqa: E402
from tests.adapter_helpers import register_random_adapter, wait_for  # noqa: E402
from tests.web_helpers import running_engine  # noqa: E402
from trainer.canary import decide  # noqa: E402
from trainer.config import GateConfig  # noqa: E402

API = "/api/conversations"
DAY_S = 86400.0
REQUEST_S = 0.5  # one request every 0.5 s per address: 120 a minute, Settings.rate_limit_per_ip
ACTIVE_MEAN, TRUE_GAP, SPREAD = 3.6, 0.3, 1.1
ATTACK_AT_S = 20 * 3600.0
ZERO_TURN_TRIES = 5
HONEST_SHARE, ATTACK_SHARE = 0.5, 0.1
LIFTED = "1000000/minute"


def stars(mean: float, rng: random.Random) -> int:
    """One honest rating: a latent satisfaction around ``mean``, rounded and clipped to 1-5."""
    return min(5, max(1, round(rng.gauss(mean, SPREAD))))


def expected_stars(mean: float) -> float:
    """The mean of ``stars(mean, ·)`` (the arm's true CSAT)."""
    cdf = lambda x: 0.5 * math.erfc(-(x - mean) / (SPREAD * math.sqrt(2)))  # noqa: E731
    return sum(k * (cdf(k + 0.5 if k < 5 else math.inf) - cdf(k - 0.5 if k > 1 else -math.inf)) for k in range(1, 6))


@dataclass(frozen=True)
class Rated:
    """A rating the bench sent: its conversation, arm, stars, simulated time, and whether the bot had answered."""

    conv_id: str
    version: str
    score: int
    t: float
    answered: bool = True


@dataclass
class Attack:
    """What one flood did."""

    addresses: int
    ratings: list[Rated]
    refused: int = 0  # zero-turn attempts answered 409
    requests: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True)
class Row:
    """One rule's view of one scenario and attack."""

    seed: int
    truth: str
    honest_n: int
    addresses: int
    rule: str
    before: float | None
    after: float | None
    decision_before: str
    decision_after: str
    p_before: tuple[float | None, float | None] = (None, None)  # (p worse, p better)
    p_after: tuple[float | None, float | None] = (None, None)

    @property
    def shift(self) -> float:
        return (self.after or 0.0) - (self.before or 0.0)

    @property
    def flipped(self) -> bool:
        return self.decision_before != self.decision_after


class Customer:
    """One client address talking to the app, as the widget does."""

    def __init__(self, app, address: str, agent: str):
        self.client, self.env, self.agent = app.test_client(), {"REMOTE_ADDR": address}, agent
        self.requests = 0

    def post(self, path: str, token: str = "", body: dict | None = None):
        self.requests += 1
        headers = {"User-Agent": self.agent, **({"Authorization": f"Bearer {token}"} if token else {})}
        return self.client.post(API + path, json=body, headers=headers, environ_base=self.env)

    def start(self) -> tuple[str, str, str]:
        created = self.post("").json
        return created["conversation_id"], created["token"], created["adapter_version"]

    def chat_and_rate(self, conv_id: str, token: str, score: int) -> int:
        assert self.post(f"/{conv_id}/messages", token, {"text": "Where is my order?"}).status_code == 200
        return self.post(f"/{conv_id}/rating", token, {"score": score}).status_code


def honest_phase(app, store, canary: str, n: int, canary_mean: float, rng: random.Random) -> list[Rated]:
    """Honest customers (an address each) until both arms have ``n`` ratings; their times spread over the day."""
    store.adapters.set_canary_share(HONEST_SHARE)
    means = {canary: canary_mean, store.adapters.active(): ACTIVE_MEAN}
    rated: list[Rated] = []
    counts = dict.fromkeys(means, 0)
    i = 0
    while min(counts.values()) < n:
        i += 1
        customer = Customer(app, f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", f"Browser/{i % 7}")
        conv_id, token, version = customer.start()
        if counts[version] >= n:
            continue  # this side is full: the customer leaves without rating
        score = stars(means[version], rng)
        assert customer.chat_and_rate(conv_id, token, score) == 200
        counts[version] += 1
        rated.append(Rated(conv_id, version, score, 0.0))
    times = sorted(rng.uniform(0, DAY_S) for _ in rated)
    return [Rated(r.conv_id, r.version, r.score, t) for r, t in zip(rated, times)]


def flood(app, store, canary: str, addresses: int, fakes: int, adverse: dict[str, int], tag: int) -> Attack:
    """``fakes`` ratings from ``addresses`` addresses, half on each arm, each address paced at the limit."""
    store.adapters.set_canary_share(ATTACK_SHARE)
    attack = Attack(addresses, [])
    for a in range(addresses):
        customer = Customer(app, f"198.{18 + tag % 2}.{tag}.{a + 1}", "FloodBot/1.0")
        mine = fakes // addresses + (a < fakes % addresses)
        quota = {canary: (mine + 1) // 2, **{v: mine // 2 for v in adverse if v != canary}}
        tries = ZERO_TURN_TRIES if a == 0 else 0
        while tries or any(quota.values()):
            conv_id, token, version = customer.start()
            if tries:  # rate without chatting first: what the old app accepted
                tries -= 1
                answer = customer.post(f"/{conv_id}/rating", token, {"score": adverse[version]})
                attack.refused += answer.status_code == 409
                answered = False
            elif quota[version] and (version == canary or not quota[canary]):  # canary first: the cap counts those
                quota[version] -= 1
                assert customer.chat_and_rate(conv_id, token, adverse[version]) == 200
                answered = True
            else:
                continue  # pinned to an arm this address is done with
            attack.ratings.append(Rated(conv_id, version, adverse[version], ATTACK_AT_S + customer.requests * REQUEST_S,
                                        answered))
        attack.requests += customer.requests
        attack.duration_s = max(attack.duration_s, customer.requests * REQUEST_S)
    return attack


def records(store, ratings: list[Rated], t0: float, old: bool):
    """The rated conversations as the canary decision reads them, at their simulated times; ``old``:
    counted as before provenance (weight 1, each its own client, zero-turn attempts included)."""
    convs = {c.id: c for c in store.conversations.many([r.conv_id for r in ratings])}
    out = []
    for r in ratings:
        if not r.answered and not old:
            continue
        update = {"rated_at": t0 + r.t, "created_at": t0 + r.t}
        if old:
            update |= {"csat": r.score, "rater": "", "csat_weight": 1.0}
        out.append(convs[r.conv_id].model_copy(update=update))
    return out


RULES = ("old", "clients only", "new")  # "clients only": the new rule without its burst cap


def decide_rule(store, canary: str, ratings: list[Rated], t0: float, rule: str):
    """The canary decision on ``ratings`` under one of ``RULES``."""
    convs = records(store, ratings, t0, old=rule == "old")
    arm = lambda v: [c for c in convs if c.adapter_version == v]  # noqa: E731
    weights = WeightRule.of(store.settings) if rule == "new" else WeightRule(share=1.0)
    return decide(arm(canary), arm(store.adapters.active()), GateConfig(), weights)


def run_scenario(settings, base_model_dir: Path, truth: str, n: int, fakes: int,
                 address_counts: tuple[int, ...], seed: int) -> tuple[list[Row], list[Attack]]:
    """One canary (``truth``: "better" or "worse"), ``n`` honest ratings a side, then each flood on top."""
    settings = settings.replace(key_prefix=f"flood{uuid.uuid4().hex[:8]}")
    store = FeedbackStore.from_settings(settings, announce=False)
    canary = register_random_adapter(store, base_model_dir, seed=seed + 1)
    store.adapters.send_to_canary(canary)
    rng = random.Random(seed)
    random.seed(seed)  # the engine pins new conversations with the global generator: the same draws each run
    sign = 1 if truth == "better" else -1
    adverse = {canary: 1 if sign > 0 else 5, store.adapters.active(): 5 if sign > 0 else 1}
    with running_engine(settings, store) as engine:
        wait_for(lambda: canary in engine.loaded_versions(), timeout=120)
        app = create_app(settings, engine, store)
        honest = honest_phase(app, store, canary, n, ACTIVE_MEAN + sign * TRUE_GAP, rng)
        attacks = [flood(app, store, canary, a, fakes, adverse, tag=i + 1) for i, a in enumerate(address_counts)]
    t0 = math.floor(time.time() / DAY_S) * DAY_S
    rows = []
    for attack in attacks:
        for rule in RULES:
            before = decide_rule(store, canary, honest, t0, rule)
            after = decide_rule(store, canary, honest + attack.ratings, t0, rule)
            rows.append(Row(seed, truth, n, attack.addresses, rule, before.mean_canary, after.mean_canary,
                            before.action, after.action, (before.p_worse, before.p_better),
                            (after.p_worse, after.p_better)))
    return rows, attacks


def _p(pair: tuple[float | None, float | None]) -> str:
    return "–" if pair[0] is None else f"{pair[0]:.3f}/{pair[1]:.3f}"


def table(rows: list[Row]) -> str:
    lines = ["| scenario seed | canary | honest n/side | addresses | rule | canary CSAT before | after | shift | "
             "p worse/better before → after | decision before → after |",
             "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        flip = " **flipped**" if r.flipped else ""
        lines.append(f"| {r.seed} | {r.truth} | {r.honest_n} | {r.addresses} | {r.rule} | {r.before:.3f} | "
                     f"{r.after:.3f} | {r.shift:+.3f} | {_p(r.p_before)} → {_p(r.p_after)} | "
                     f"{r.decision_before} → {r.decision_after}{flip} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--honest", type=int, nargs="+", default=[60, 150], help="honest ratings per side")
    parser.add_argument("--fakes", type=int, default=300, help="fake ratings per attack")
    parser.add_argument("--addresses", type=int, nargs="+", default=[1, 20], help="attacker addresses per attack")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of every scenario per seed")
    args = parser.parse_args()

    from feedback_store.server import ensure_embedded_redis, stop_embedded_redis
    from loopdesk.config import load_settings
    from sim.bootstrap import build_base_model

    out = Path(__file__).resolve().parent / "out" / "rating_flood"
    base = out / "base-test"
    if not (base / "config.json").exists():
        print("building the test-size base model into bench/out/rating_flood/base-test ...")
        build_base_model(base, size="test", progress=False)
    data_dir = Path(tempfile.mkdtemp(prefix="loopdesk-flood-"))
    ensure_embedded_redis(data_dir)
    settings = load_settings({}, data_dir=data_dir, base_model=str(base), max_reply_tokens=4,
                             rate_limit_per_ip=LIFTED, rate_limit_per_conversation=LIFTED)
    print(f"true CSAT: active {expected_stars(ACTIVE_MEAN):.3f}, canary better "
          f"{expected_stars(ACTIVE_MEAN + TRUE_GAP):.3f} / worse {expected_stars(ACTIVE_MEAN - TRUE_GAP):.3f}; "
          f"{args.fakes} fakes per attack; per-client cap {settings.rating_client_cap} per "
          f"{settings.rating_client_window_s} s; burst windows {settings.csat_burst_window_s} s, share "
          f"{settings.csat_burst_share}\n")
    started, rows = time.monotonic(), []
    try:
        scenarios = [(seed, t, n) for seed in args.seeds for n in args.honest for t in ("better", "worse")]
        for i, (seed, truth, n) in enumerate(scenarios):
            scenario_rows, attacks = run_scenario(settings, base, truth, n, args.fakes,
                                                  tuple(args.addresses), 1000 * seed + i)
            rows += scenario_rows
            for attack in attacks:
                stored = sum(r.answered for r in attack.ratings)
                print(f"seed {seed} {truth:6} n={n:3}: {attack.addresses:2} address(es): {stored} fakes stored, "
                      f"{attack.refused}/{ZERO_TURN_TRIES} zero-turn attempts refused (409), {attack.requests} "
                      f"requests over {attack.duration_s / 60:.1f} simulated minutes")
    finally:
        stop_embedded_redis(data_dir)
    print("\n" + table([r for r in rows if r.rule != "clients only"]) + "\n")
    for rule in RULES:
        mine = [r for r in rows if r.rule == rule]
        worst = max(abs(r.shift) for r in mine)
        print(f"{rule}: largest |shift| of the canary's CSAT {worst:.3f}, decisions flipped "
              f"{sum(r.flipped for r in mine)} of {len(mine)}")
    old = max(abs(r.shift) for r in rows if r.rule == "old")
    new = [r for r in rows if r.rule == "new"]
    worst_new = max(abs(r.shift) for r in new)
    met = worst_new < 0.1 and not any(r.flipped for r in new)
    print(f"largest shift old / new: x{old / max(worst_new, 1e-9):.1f}; target (new: |shift| < 0.1, no flip): "
          f"{'met' if met else 'NOT met'}; {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
