"""The trainer gate's external evaluator: a panel of simulated customers, candidate vs active adapter.

The panel runs in a private sandbox so it leaves no trace in production data: its own
embedded Redis in a temporary directory, with a registry naming the active version (read from
the real store) active and the candidate canary. Both are copied into the sandbox's adapters
directory first: the active one after the real registry's check (``verify_registered``: inside the
real adapters directory, its sha256), the candidate (given on the command line) after ``verify``. One engine serves both; two instances of the
real chat app, each pinning every new conversation to one of the versions, face the same
customers (same seed: same intents, phrasings, personas and rating noise), so the comparison
is paired. Both answer from the real store's knowledge base (read only). The score is the
panel's mean CSAT.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopdesk.config import Settings
from sim.company import Company
from sim.customers import CustomerConfig
from harness.serving import SIMULATOR_RATE_LIMIT, serve
from sim.simulate import Summary, run_customers, summarize

LOAD_TIMEOUT_S = 300.0


class PinnedEngine:
    """The serving engine, with every new conversation pinned to one adapter version."""

    def __init__(self, engine: Any, version: str):
        self._engine = engine
        self.version = version

    def choose_version(self) -> str:
        return self.version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@dataclass(frozen=True)
class PanelResult:
    """The gate's verdict: ``passed`` when the candidate's CSAT is at least the active's minus ``tolerance``."""

    passed: bool
    candidate_score: float
    active_score: float
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"pass", "candidate_score", "active_score", "details"}``, what the gate reads."""
        return {"pass": self.passed, "candidate_score": self.candidate_score,
                "active_score": self.active_score, "details": self.details}


def _sandbox_registry(store: Any, real: Any, adapters_dir: Path, candidate_dir: Path, active: str,
                      base_model: str) -> str:
    """Copy the active version (checked against the real registry and ``adapters_dir``) and the candidate into
    the sandbox's adapters directory; register the active one as active and the candidate as canary. Returns
    the candidate's name: its manifest's version, with ``-candidate`` appended where that is the active
    version's name (an adapter from another data directory).

    Raises:
        InvalidAdapterError: the active version's path lies outside ``adapters_dir`` or its files fail the
            registry's check, or the candidate directory is no adapter of ``base_model`` (``verify``).
    """
    from loopdesk.adapter_format import verify, verify_registered
    from feedback_store.records import BASE_VERSION, AdapterVersion

    sandbox = store.settings.adapters_dir
    if active != BASE_VERSION:
        record = real.adapters.get(active)
        source = verify_registered(record.path, adapters_dir, base_model, version=active,
                                   expected_sha256=record.sha256)
        shutil.copytree(source, sandbox / active)
        store.adapters.register(record.model_copy(update={"status": "candidate", "path": str(sandbox / active)}))
        store.adapters.promote(active, "panel: the active version")
    manifest = verify(candidate_dir, base_model)
    version = manifest["version"]
    if version == active:
        version = f"{version[:54]}-candidate"
    shutil.copytree(candidate_dir, sandbox / version)
    now = time.time()
    store.adapters.register(AdapterVersion(
        version=version, path=str(sandbox / version), sha256=manifest["sha256"],
        base_model=manifest["base_model"], parent=manifest.get("parent", BASE_VERSION),
        created_at=now, updated_at=now))
    store.adapters.send_to_canary(version, "panel: the candidate")
    return version


def _wait_loaded(engine: Any, versions: set[str]) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while not versions <= set(engine.loaded_versions()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the panel engine could not load {sorted(versions - set(engine.loaded_versions()))}"
                               " (refused or too slow; see the log)")
        time.sleep(0.2)


def _details(summary: Summary) -> dict[str, Any]:
    return {"csat_low": summary.csat.low, "csat_high": summary.csat.high, "rated": summary.csat.n,
            "rubric": summary.rubric.mean, "errors": summary.errors}


def run_panel(settings: Settings, company: Company, candidate_dir: Path, active: str | None, n: int,
              concurrency: int, config: CustomerConfig, seed: int = 0, tolerance: float = 0.1) -> PanelResult:
    """Face ``n`` simulated customers with the candidate and with the active version; compare mean CSAT.
    The bot answers from the real store's knowledge base."""
    from bot.app import create_app
    from bot.runtime import Engine
    from bot.runtime.knowledge import LiveKnowledge
    from feedback_store import FeedbackStore
    from feedback_store.server import stop_embedded_redis

    real = FeedbackStore.from_settings(settings, announce=False)
    active = active or real.adapters.active()
    with ExitStack() as stack:
        sandbox = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopdesk-panel-")))
        stack.callback(stop_embedded_redis, sandbox)
        panel_settings = settings.replace(
            data_dir=sandbox, redis_url="", base_model=settings.base_model_ref,
            rate_limit_per_ip=SIMULATOR_RATE_LIMIT, rate_limit_per_conversation=SIMULATOR_RATE_LIMIT)
        store = FeedbackStore.from_settings(panel_settings, announce=False)
        candidate = _sandbox_registry(store, real, settings.adapters_dir, candidate_dir, active,
                                      settings.base_model_ref)
        engine = Engine(panel_settings, store)
        engine.start()
        stack.callback(engine.stop)
        _wait_loaded(engine, {candidate, active})
        knowledge = LiveKnowledge(real, panel_settings)
        stack.callback(knowledge.stop)
        summaries = {}
        for version in (candidate, active):
            app = create_app(panel_settings, PinnedEngine(engine, version), store, knowledge)
            with serve(app) as url:
                summaries[version] = summarize(run_customers(url, company, n, concurrency, config, seed,
                                                             progress=False))
    cand, act = summaries[candidate].csat.mean, summaries[active].csat.mean
    return PanelResult(
        passed=cand >= act - tolerance, candidate_score=cand, active_score=act,
        details={"candidate": candidate, "active": active, "customers": n, "seed": seed, "tolerance": tolerance,
                 "score": "mean CSAT of the panel", "candidate_stats": _details(summaries[candidate]),
                 "active_stats": _details(summaries[active])})
