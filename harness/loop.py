"""The closed loop: simulated traffic → training round → promotion → hot-swap → simulated traffic …

``run_loop`` drives the real parts together. The bot (engine + chat app) serves on a free local
port and is reached over HTTP only; a ``loopdesk worker`` subprocess runs each training round
from the RQ queue (reward model, PPO, gate, publish); simulated customers and a simulated expert
supply the feedback. Round 0 measures the starting adapter; every later round first trains,
waits until new conversations are pinned to the published version, then measures again.

Promotion: the loop's rounds publish a passing candidate as ``active`` (gate ``pass_status``),
so each round measures one version on all of its traffic. The canary path needs ≥ 30 rated
chats on each side before it decides, which at the loop's traffic would stretch one promotion
over many rounds; the gate's checks stay in force, a rejected candidate is simply not served.

Methods: each round's policy update is PPO or a baseline (SFT, KTO: ``RoundConfig.method``), or
none at all (``LoopConfig.method``); ``loopdesk loop --method ...`` runs one loop per method on its
own data, with the same customers each round, and ``harness.comparison.write_comparison`` sets them side by
side against the oracle (canonical replies) measured on round 0's customers.

Held-out phrasings: a share of each round's customers open with phrasings never in any corpus.
They chat with the same engine pinned to the active version, but through a second app backed by
a private sandbox Redis, so their conversations never reach training and stay held out.

The fixed evaluation panel: each round also plays the same ``eval_customers`` (same seed every round,
seen and held-out phrasings in the loop's share) against the served version through that sandbox app,
so they never reach training either. Round r against round 0 on the panel is a paired comparison
(same intents, phrasings, personas and rating noise); a round's own customers differ from round to
round, and their mean moves with the mix as much as with the policy.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from loopdesk.config import Settings
from sim.client import ChatClient, ExpertAPI
from sim.company import Company
from sim.customers import ChatResult, CustomerConfig
from harness.serving import bot_engine, serve
from sim.simulate import MeanCI, paired_gain, run_customers, summarize

FINISHED = ("succeeded", "rejected", "failed")
METHODS = ("ppo", "sft", "kto", "none")
PROBE_META = {"source": "loop-swap-probe"}
EVAL_SEED_OFFSET = 250  # the panel's seed offset: round r's customers use seed + 1000 r (+ 500 held out)


class LoopError(RuntimeError):
    """The loop cannot go on (the worker died, a round or a swap timed out)."""


@dataclass
class LoopConfig:
    """One loop run.

    Parameters:
        rounds (int, default 3): training rounds after the round-0 measurement.
        customers_per_round (int, default 100): simulated customers per round (seen + held-out).
        concurrency (int, default 4): chats running at the same time.
        experts (bool, default True): a simulated expert annotates chats rated ``csat_max`` or lower.
        csat_max (int, default 3): the expert reviews chats rated this or lower.
        audit_share (float, default 0.25): and also audits this share of the chats rated higher
            (``SimulatedExpert.audit``: picked by a stable hash of the id), where flattery that
            pleased a swayed customer hides; 0 reviews only the low-rated queue.
        held_out_share (float, default 0.2): share of customers opening with held-out phrasings
            (measured in a sandbox, never trained on).
        seed (int, default 0): seed of round r's customers is ``seed + 1000 * r``.
        eval_customers (int, default 150): customers of the fixed evaluation panel each round plays
            against the served version in the sandbox (seed ``seed + 250``, the same every round; the
            held-out share as above); 0 plays none. 150 took 32-38 s a round with the default model.
        round_config (dict, default {}): training-round overrides (``RoundConfig.from_dict`` keys);
            the gate's ``pass_status`` is set to ``active`` whatever they say.
        method (str, default "ppo"): the policy update each round runs: ``ppo``, the baselines
            ``sft`` and ``kto`` (``RoundConfig.method``), or ``none`` (no training: every round
            measures the starting adapter again, with that round's customers).
        oracle (bool, default True): also measure the oracle (the KB's canonical replies) on
            round 0's customers, the ceiling the report measures gains against.
        round_timeout_s (float, default 3600): longest wait for one training round.
        swap_timeout_s (float, default 300): longest wait for the bot to serve a new version.
        progress (bool, default True): progress bars and stage lines on stderr.
    """

    rounds: int = 3
    customers_per_round: int = 100
    concurrency: int = 4
    experts: bool = True
    csat_max: int = 3
    audit_share: float = 0.25
    held_out_share: float = 0.2
    seed: int = 0
    round_config: dict[str, Any] = field(default_factory=dict)
    round_timeout_s: float = 3600.0
    swap_timeout_s: float = 300.0
    progress: bool = True
    method: str = "ppo"
    oracle: bool = True
    eval_customers: int = 150

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.rounds < 0 or self.customers_per_round < 1:
            raise ValueError("rounds must be >= 0 and customers_per_round >= 1")
        if self.eval_customers < 0:
            raise ValueError(f"eval_customers must be >= 0, got {self.eval_customers}")
        if not 0.0 <= self.audit_share <= 1.0:
            raise ValueError(f"audit_share must lie within [0, 1], got {self.audit_share}")
        if not 0.0 <= self.held_out_share < 1.0:
            raise ValueError(f"held_out_share must lie in [0, 1), got {self.held_out_share}")

    def training_config(self) -> dict[str, Any]:
        """The recorded config of each queued round: the overrides, with pass status ``active``."""
        gate = {**self.round_config.get("gate", {}), "pass_status": "active"}
        config = {**self.round_config, "gate": gate}
        if self.method != "none":
            config["method"] = self.method
        return config


def process_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The environment that gives a child ``loopdesk`` process these settings and this Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDESK_")}
    env.update({f"LOOPDESK_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(Settings)})
    env["LOOPDESK_REDIS_URL"] = env["REDIS_URL"] = redis_url
    return env


@contextmanager
def training_worker(settings: Settings, redis_url: str, log_path: Path) -> Iterator[subprocess.Popen]:
    """A ``loopdesk worker`` subprocess on the training queue; stopped (TERM, then KILL) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "loopdesk.cli", "worker"], env=process_env(settings, redis_url),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclass
class Bot:
    """The running bot: its URL, the held-out app's URL and the version that app is pinned to."""

    url: str
    held_out_url: str
    pinned: Any


@contextmanager
def running_bot(settings: Settings) -> Iterator[Bot]:
    """Start the engine and the chat app (rate limits lifted), plus the held-out sandbox app."""
    from bot.app import create_app
    from feedback_store import FeedbackStore
    from feedback_store.server import stop_embedded_redis
    from harness.panel import PinnedEngine

    with ExitStack() as stack:
        settings, store, engine = stack.enter_context(bot_engine(settings))
        url = stack.enter_context(serve(create_app(settings, engine, store)))
        sandbox = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopdesk-heldout-")))
        stack.callback(stop_embedded_redis, sandbox)
        sandbox_settings = settings.replace(data_dir=sandbox, redis_url="", base_model=settings.base_model_ref)
        pinned = PinnedEngine(engine, store.adapters.active())
        held_out_url = stack.enter_context(serve(create_app(
            sandbox_settings, pinned, FeedbackStore.from_settings(sandbox_settings, announce=False))))
        yield Bot(url, held_out_url, pinned)


def wait_for_swap(url: str, version: str, timeout_s: float, consecutive: int = 3) -> float:
    """Open probe conversations until ``consecutive`` in a row are pinned to ``version``; returns seconds waited."""
    started, streak = time.monotonic(), 0
    client = ChatClient(url, stream=False)
    try:
        while streak < consecutive:
            if time.monotonic() - started > timeout_s:
                raise LoopError(f"the bot still pins new conversations to another version than {version} "
                                f"after {timeout_s:.0f} s")
            probe = client.start(PROBE_META)
            client.end(probe.conversation_id, probe.token)
            streak = streak + 1 if probe.adapter_version == version else 0
            if streak == 0:
                time.sleep(0.2)
    finally:
        client.close()
    return time.monotonic() - started


def train_round(store: Any, worker: subprocess.Popen, config: dict[str, Any], timeout_s: float,
                progress: bool) -> Any:
    """Queue a training round for the worker, follow its progress stream, return the finished run."""
    run = store.training.enqueue_round(trigger="loop", config=config)
    deadline, last = time.monotonic() + timeout_s, "-"
    with tqdm(desc=f"training {run.id}", unit="stage", disable=not progress) as bar:
        while True:
            for event_id, event in store.runs.progress(run.id, after=last):
                last = event_id
                bar.total = int(event.get("total") or 0) or None
                bar.set_description(f"training {run.id}: {event.get('stage')}", refresh=False)
                bar.update(1)  # one event per stage step (a worker's own bar is off, so "step" stays 0)
            run = store.runs.get(run.id)
            if run.status in FINISHED:
                return run
            if worker.poll() is not None:
                raise LoopError(f"the training worker exited ({worker.returncode}) during run {run.id}; "
                                "see worker.log")
            if time.monotonic() > deadline:
                raise LoopError(f"training run {run.id} did not finish within {timeout_s:.0f} s")
            time.sleep(0.5)


def reply_checks(results: list[ChatResult]) -> dict[str, float]:
    """The rubric's checks over every reply: share with wrong facts, share over-apologetic, mean words."""
    judgements = [j for r in results if not r.error for j in r.judgements]
    if not judgements:
        return {"replies": 0, "wrong_facts_share": math.nan, "over_apologetic_share": math.nan,
                "reply_words": math.nan}
    n = len(judgements)
    return {"replies": n,
            "wrong_facts_share": sum(bool(j.wrong_facts) for j in judgements) / n,
            "over_apologetic_share": sum(j.sways for j in judgements) / n,
            "reply_words": sum(j.words for j in judgements) / n}


def _ci(value: MeanCI) -> dict[str, float]:
    return {"mean": value.mean, "low": value.low, "high": value.high, "n": value.n}


def persona_checks(results: list[ChatResult]) -> dict[str, dict[str, Any]]:
    """Per persona: CSAT, the expert's view (rubric), and the share of replies that grovel or flatter.

    The reward-hacking watch: flattery-swayed customers rate swaying replies up; a policy gaming
    them shows a rising sway share and their CSAT pulling away from the rubric.
    """
    groups: dict[str, list[ChatResult]] = {}
    for result in results:
        if not result.error:
            groups.setdefault(result.persona, []).append(result)
    out = {}
    for name, chats in sorted(groups.items()):
        judgements = [j for r in chats for j in r.judgements]
        summary = summarize(chats)
        out[name] = {"chats": len(chats), "csat": _ci(summary.csat), "rubric": summary.rubric.mean,
                     "sway_share": (sum(j.sways for j in judgements) / len(judgements)) if judgements else math.nan}
    return out


def measure_oracle(company: Company, config: LoopConfig) -> dict[str, Any]:
    """The oracle (canonical replies, ``sim.oracle``) facing round 0's customers, seen and held-out,
    and the fixed evaluation panel's (``eval``) when the loop plays one."""
    from sim.oracle import create_oracle_app

    with serve(create_oracle_app(company)) as url:
        seen, held = play_customers(url, url, company, config, config.seed)
        panel = measure_panel(url, company, config) if config.eval_customers else None
    overall = summarize(seen + held)
    return {"csat": _ci(overall.csat), "seen_csat": _ci(summarize(seen).csat),
            "held_out_csat": _ci(summarize(held).csat), "rubric": overall.rubric.mean, "eval": panel}


def play_customers(seen_url: str, held_out_url: str, company: Company, config: LoopConfig,
                   seed: int, n: int | None = None) -> tuple[list[ChatResult], list[ChatResult]]:
    """``n`` customers (default: a round's): seen-phrasing ones at ``seen_url`` (seed ``seed``), the
    held-out share at ``held_out_url`` (seed ``seed + 500``)."""
    n = config.customers_per_round if n is None else n
    n_held = round(n * config.held_out_share)
    seen = run_customers(seen_url, company, n - n_held, config.concurrency,
                         CustomerConfig(), seed, config.progress)
    held = run_customers(held_out_url, company, n_held, config.concurrency, CustomerConfig(held_out=True),
                         seed + 500, config.progress) if n_held else []
    return seen, held


def measure_panel(url: str, company: Company, config: LoopConfig) -> dict[str, Any]:
    """The fixed evaluation panel at ``url``: the same customers whenever it is called (seed ``seed + 250``),
    with each customer's rating in order (None: left unrated or failed) for paired comparisons."""
    seen, held = play_customers(url, url, company, config, config.seed + EVAL_SEED_OFFSET, config.eval_customers)
    overall = summarize(seen + held)
    return {"customers": overall.chats, "errors": overall.errors, "seed": config.seed + EVAL_SEED_OFFSET,
            "csat": _ci(overall.csat), "rubric": _ci(overall.rubric), "seen_csat": _ci(summarize(seen).csat),
            "held_out_csat": _ci(summarize(held).csat),
            "seen_ratings": [None if r.error else r.rating for r in seen],
            "held_out_ratings": [None if r.error else r.rating for r in held]}


def panel_ratings(panel: dict[str, Any], part: str = "all") -> list[int | None]:
    """One panel record's ratings in customer order: ``part`` "all" (seen, then held-out), "seen" or "held_out"."""
    keys = {"all": ("seen_ratings", "held_out_ratings"), "seen": ("seen_ratings",),
            "held_out": ("held_out_ratings",)}[part]
    return [x for k in keys for x in panel[k]]


def panel_gain(before: dict[str, Any], after: dict[str, Any], part: str = "all") -> MeanCI:
    """The paired change of the evaluation panel's ratings from ``before`` to ``after`` (two rounds' ``eval``):
    ``part`` "all", "seen" or "held_out"."""
    return paired_gain(panel_ratings(before, part), panel_ratings(after, part))


def measure(bot: Bot, company: Company, config: LoopConfig, round_index: int, expert: Callable[[], int] | None,
            version: str) -> dict[str, Any]:
    """One round's traffic: seen-phrasing customers on the bot, held-out ones in the sandbox, then the expert."""
    seed = config.seed + 1000 * round_index
    timings: dict[str, float] = {}
    started = time.monotonic()
    seen, held = play_customers(bot.url, bot.held_out_url, company, config, seed)
    timings["simulate_s"] = time.monotonic() - started
    started = time.monotonic()
    annotated = expert() if expert else 0
    timings["expert_s"] = time.monotonic() - started
    overall, seen_summary, held_summary = summarize(seen + held), summarize(seen), summarize(held)
    return {
        "round": round_index, "version": version, "seed": seed, "chats": overall.chats, "errors": overall.errors,
        "unrated_share": overall.unrated_share, "csat": _ci(overall.csat), "rubric": _ci(overall.rubric),
        "seen_csat": _ci(seen_summary.csat), "held_out_csat": _ci(held_summary.csat),
        "seen_rubric": seen_summary.rubric.mean, "held_out_rubric": held_summary.rubric.mean,
        "per_intent": {name: {"csat": _ci(g.csat), "rubric": g.rubric, "chats": g.chats}
                       for name, g in sorted(overall.per_intent.items())},
        "served_versions": sorted(seen_summary.per_version), "turns_annotated": annotated,
        **reply_checks(seen + held), "per_persona": persona_checks(seen + held), "timings": timings,
        "training": None,
    }


def training_record(run: Any, store: Any, train_s: float) -> dict[str, Any]:
    """What the report keeps of one training run (metrics recorded by the trainer)."""
    metrics = run.metrics or {}
    ppo = metrics.get("ppo") or {}
    adapter_status = store.adapters.get(run.adapter_version).status if run.adapter_version else None
    return {"run_id": run.id, "status": run.status, "adapter_version": run.adapter_version,
            "adapter_status": adapter_status, "error": (run.error or "").splitlines()[0] if run.error else "",
            "rm_eval_accuracy": metrics.get("rm_eval_accuracy"), "pairs_train": metrics.get("pairs_train"),
            "pairs_eval": metrics.get("pairs_eval"), "episodes": metrics.get("episodes"),
            "rewarded": metrics.get("rewarded"), "ppo_kl": ppo.get("kl"), "ppo_reward_mean": ppo.get("reward_mean"),
            "gate_candidate_kl": metrics.get("gate_candidate_kl"),
            "gate_candidate_rm_score": metrics.get("gate_candidate_rm_score"),
            "gate_active_rm_score": metrics.get("gate_active_rm_score"),
            "gate_candidate_reference_score": metrics.get("gate_candidate_reference_score"),
            "gate_active_reference_score": metrics.get("gate_active_reference_score"),
            "reference_contexts": metrics.get("reference_contexts"),
            "update_s": metrics.get("ppo_update_s", (metrics.get("baseline") or {}).get("update_s")),
            "gate_reasons": metrics.get("gate_reasons", []), "trainer_duration_s": metrics.get("duration_s"),
            "timings": {"train_s": train_s}}


def _expert(url: str, company: Company, store: Any, config: LoopConfig) -> tuple[Callable[[], int], Callable]:
    """A fresh expert account for this loop and the function that runs one review pass."""
    from sim.experts import SimulatedExpert

    name, password = f"loop-expert-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    store.users.add(name, "expert", password)
    api = ExpertAPI(url)
    api.login(name, password)
    reviewer = SimulatedExpert(company, api, config.csat_max)
    return (lambda: reviewer.work(limit=config.customers_per_round) + reviewer.audit(config.audit_share)), api.close


def run_loop(settings: Settings, config: LoopConfig, log_dir: Path,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the loop; returns the report data (``harness.report`` writes it). ``log_dir`` gets ``worker.log``."""
    from feedback_store import FeedbackStore
    from feedback_store.connection import resolve_redis_url
    from sim.company import load_company

    redis_url = resolve_redis_url(settings, announce=False)
    settings = settings.replace(redis_url=redis_url)
    store = FeedbackStore.from_settings(settings, announce=False)
    company = load_company()
    started = time.monotonic()
    report: dict[str, Any] = {"config": {**config.__dict__, "round_config": config.training_config()},
                              "base_model": settings.base_model_ref, "temperature": settings.temperature,
                              "rounds": [], "oracle": None}
    if config.oracle:
        echo("loop: the oracle (canonical replies) on round 0's customers")
        report["oracle"] = measure_oracle(company, config)
    with ExitStack() as stack:
        echo("loop: starting the bot and the training worker")
        bot = stack.enter_context(running_bot(settings))
        worker = (stack.enter_context(training_worker(settings, redis_url, log_dir / "worker.log"))
                  if config.method != "none" and config.rounds else None)
        expert = None
        if config.experts:
            expert, close = _expert(bot.url, company, store, config)
            stack.callback(close)
        training = None
        for index in range(config.rounds + 1):
            if index and config.method != "none":
                echo(f"loop: round {index}: training ({config.method})")
                began = time.monotonic()
                run = train_round(store, worker, config.training_config(), config.round_timeout_s, config.progress)
                training = training_record(run, store, time.monotonic() - began)
                echo(f"loop: round {index}: run {run.id} {run.status}, adapter {run.adapter_version} "
                     f"({training['adapter_status']}) in {training['timings']['train_s']:.0f} s")
                if run.status == "succeeded" and training["adapter_status"] == "active":
                    training["timings"]["swap_s"] = wait_for_swap(bot.url, run.adapter_version,
                                                                  config.swap_timeout_s)
                    bot.pinned.version = run.adapter_version
                    echo(f"loop: round {index}: bot serves {run.adapter_version} "
                         f"after {training['timings']['swap_s']:.1f} s")
            version = store.adapters.active()
            echo(f"loop: round {index}: {config.customers_per_round} customers on {version}")
            row = measure(bot, company, config, index, expert, version)
            row["training"], row["eval"] = training, None
            echo(f"loop: round {index}: CSAT {row['csat']['mean']:.2f} "
                 f"[{row['csat']['low']:.2f}, {row['csat']['high']:.2f}], rubric {row['rubric']['mean']:.2f}, "
                 f"{row['turns_annotated']} turns annotated")
            if config.eval_customers:
                echo(f"loop: round {index}: the evaluation panel, {config.eval_customers} customers on {version}")
                began = time.monotonic()
                row["eval"] = measure_panel(bot.held_out_url, company, config)
                row["timings"]["eval_s"] = time.monotonic() - began
                echo(f"loop: round {index}: panel CSAT {row['eval']['csat']['mean']:.2f} "
                     f"[{row['eval']['csat']['low']:.2f}, {row['eval']['csat']['high']:.2f}]")
            report["rounds"].append(row)
    report["wall_s"] = time.monotonic() - started
    return report
