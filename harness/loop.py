"""The closed loop: simulated traffic → training round → promotion → hot-swap → simulated traffic …

``run_loop`` drives the real parts together. The bot (engine + chat app) serves on a free local
port and is reached over HTTP only; a ``loopdesk worker`` subprocess runs each training round
from the RQ queue (reward model, PPO, gate, release); simulated customers and a simulated expert
supply the feedback. Round 0 measures the starting adapter; every later round first trains,
waits until new conversations are pinned to the released version, then measures again. What
the loop starts lives in ``harness.processes``, how a round is measured in ``harness.measure``.

Promotion: the loop's rounds release a passing candidate as ``active`` (gate ``pass_status``),
so each round measures one version on all of its traffic. That, the method and the loop's other round
overrides (the gate's evaluator among them) are the worker subprocess's own round config (a
``--round-config`` file, ``LoopConfig.worker_config``): a queued run never carries the gate, so the
loop's runs record nothing. The canary path needs ≥ 30 rated
chats on each side before it decides, which at the loop's traffic would stretch one promotion
over many rounds; the gate's checks stay in force, a rejected candidate is simply not served.

Methods: each round's policy update is PPO or a baseline (SFT, KTO: ``RoundConfig.method``), or
none at all (``LoopConfig.method``); ``loopdesk loop --method ...`` runs one loop per method on its
own data, with the same customers each round, and ``harness.comparison.write_comparison`` sets
them side by side against the oracle (canonical replies) measured on round 0's customers.

Held-out phrasings: a share of each round's customers open with phrasings never in any corpus.
They chat with the same engine pinned to the active version, but through a second app backed by
a private sandbox Redis, so their conversations never reach training and stay held out.

The fixed evaluation panel: each round also plays the same ``eval_customers`` (same seed every round,
seen and held-out phrasings in the loop's share) against the served version through that sandbox app,
so they never reach training either.

Handoffs: the ``ask_person_share`` of customers ask for a person when the bot fails them. On the bot, a
simulated agent (``sim.agents``, signed in to the inbox's JSON API with an account the loop creates) is
on duty for the whole loop: it claims each handed-off chat, answers with the canonical reply after
``agent_delay_s`` and resolves it, and the customer rates; those chats train the next round (the agent's
reply is a demonstration, the handoff a penalty on the bot turns before it). The sandbox has no agent:
held-out and panel customers who ask are told that nobody is available and rate the bot's part, so the
panel keeps measuring the bot alone. Round r against round 0 on the panel is a paired comparison
(same intents, phrasings, personas and rating noise); a round's own customers differ from round to
round, and their mean moves with the mix as much as with the policy.
"""

from __future__ import annotations

import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.measure import measure, measure_oracle, measure_panel
from harness.processes import running_bot, train_round, training_worker, wait_for_swap
from loopdesk.config import Settings
from sim.client import ExpertAPI
from sim.company import Company

METHODS = ("ppo", "sft", "kto", "none")


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
        out_of_scope_share (float, default 0.1): share of customers (seen and held-out alike)
            asking a question no help article answers (``CustomerConfig.out_of_scope_share``).
        seed (int, default 0): seed of round r's customers is ``seed + 1000 * r``.
        eval_customers (int, default 150): customers of the fixed evaluation panel each round plays
            against the served version in the sandbox (seed ``seed + 250``, the same every round; the
            held-out share as above); 0 plays none. 150 took 32-38 s a round with the default model.
        round_config (dict, default {}): training-round overrides, as a ``--round-config`` file holds them
            (the worker refuses a bad one, the serving fields among them, at its start); the gate's
            ``pass_status`` is set to ``active`` whatever they say.
        method (str, default "ppo"): the policy update each round runs: ``ppo``, the baselines
            ``sft`` and ``kto`` (``RoundConfig.method``), or ``none`` (no training: every round
            measures the starting adapter again, with that round's customers).
        oracle (bool, default True): also measure the oracle (the KB's canonical replies) on
            round 0's customers, the ceiling the report measures gains against.
        ask_person_share (float, default 0.25): share of customers who ask for a person when the bot fails
            them (``CustomerConfig.ask_person_share``), on the bot and in the sandbox alike.
        agent_delay_s (float, default 1.0): the simulated agent answers a chat this many seconds after
            claiming it.
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
    out_of_scope_share: float = 0.1
    seed: int = 0
    round_config: dict[str, Any] = field(default_factory=dict)
    round_timeout_s: float = 3600.0
    swap_timeout_s: float = 300.0
    progress: bool = True
    method: str = "ppo"
    oracle: bool = True
    eval_customers: int = 150
    ask_person_share: float = 0.25
    agent_delay_s: float = 1.0

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
        if not 0.0 <= self.out_of_scope_share <= 1.0:
            raise ValueError(f"out_of_scope_share must lie within [0, 1], got {self.out_of_scope_share}")
        if not 0.0 <= self.ask_person_share <= 1.0:
            raise ValueError(f"ask_person_share must lie within [0, 1], got {self.ask_person_share}")
        if self.agent_delay_s < 0:
            raise ValueError(f"agent_delay_s must be >= 0, got {self.agent_delay_s}")

    def worker_config(self) -> dict[str, Any]:
        """The worker subprocess's own round config: the overrides, with pass status ``active`` and the method."""
        gate = {**self.round_config.get("gate", {}), "pass_status": "active"}
        config = {**self.round_config, "gate": gate}
        if self.method != "none":
            config["method"] = self.method
        return config


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


def _signed_in(api: Any, store: Any, role: str, display_name: str = "") -> Any:
    """``api`` (a console client) signed in to a fresh account of ``role`` made for this loop."""
    name, password = f"loop-{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    store.users.add(name, role, password, display_name)
    api.login(name, password)
    return api


def _expert(url: str, company: Company, store: Any, config: LoopConfig) -> tuple[Callable[[], int], Callable]:
    """A fresh expert account for this loop and the function that runs one review pass."""
    from sim.experts import SimulatedExpert

    api = _signed_in(ExpertAPI(url), store, "expert")
    reviewer = SimulatedExpert(company, api, config.csat_max)
    return (lambda: reviewer.work(limit=config.customers_per_round) + reviewer.audit(config.audit_share)), api.close


def _agent(url: str, company: Company, store: Any, config: LoopConfig) -> tuple[Any, Callable]:
    """A fresh agent account for this loop, signed in to the inbox, and the simulated agent using it."""
    from sim.agents import SimulatedAgent
    from sim.client import InboxAPI

    api = _signed_in(InboxAPI(url), store, "agent", "Sam from Northwind")
    return SimulatedAgent(company, api, config.agent_delay_s), api.close


def run_loop(settings: Settings, config: LoopConfig, log_dir: Path,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the loop; returns the report data (``harness.report`` writes it). ``log_dir`` gets ``worker.log`` and
    the worker's ``round-config.json``."""
    from feedback_store import FeedbackStore
    from feedback_store.connection import resolve_redis_url
    from sim.company import load_company

    redis_url = resolve_redis_url(settings, announce=False)
    settings = settings.replace(redis_url=redis_url)
    store = FeedbackStore.from_settings(settings, announce=False)
    company = load_company()
    started = time.monotonic()
    report: dict[str, Any] = {"config": {**config.__dict__, "round_config": config.worker_config()},
                              "base_model": settings.base_model_ref, "temperature": settings.temperature,
                              "rounds": [], "oracle": None}
    if config.oracle:
        echo("loop: the oracle (canonical replies) on round 0's customers")
        report["oracle"] = measure_oracle(company, config)
    with ExitStack() as stack:
        echo("loop: starting the bot and the training worker")
        bot = stack.enter_context(running_bot(settings))
        worker = (stack.enter_context(training_worker(settings, redis_url, log_dir, config.worker_config()))
                  if config.method != "none" and config.rounds else None)
        expert = None
        if config.experts:
            expert, close = _expert(bot.url, company, store, config)
            stack.callback(close)
        agent, close = _agent(bot.url, company, store, config)
        stack.callback(close)
        stack.enter_context(agent.on_duty())
        training = None
        for index in range(config.rounds + 1):
            if index and config.method != "none":
                echo(f"loop: round {index}: training ({config.method})")
                began = time.monotonic()
                run = train_round(store, worker, config.round_timeout_s, config.progress)
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
            answered = len(agent.answered)
            row = measure(bot, company, config, index, expert, version)
            row["handoffs"]["agent_answered"] = len(agent.answered) - answered
            row["training"], row["eval"] = training, None
            echo(f"loop: round {index}: CSAT {row['csat']['mean']:.2f} "
                 f"[{row['csat']['low']:.2f}, {row['csat']['high']:.2f}], rubric {row['rubric']['mean']:.2f}, "
                 f"{row['turns_annotated']} turns annotated, handed off {row['handoffs']['handoff_rate']:.0%}, "
                 f"{row['handoffs']['unheeded_requests']} requests for a person not handed off")
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
