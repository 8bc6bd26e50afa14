"""What the loop starts and waits on: the bot (engine, chat app and held-out sandbox app) and the
``loopdesk worker`` subprocess that runs each queued training round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from harness.serving import bot_engine, serve
from loopdesk.config import Settings
from sim.client import ChatClient

FINISHED = ("succeeded", "rejected", "failed")
PROBE_META = {"source": "loop-swap-probe"}


class LoopError(RuntimeError):
    """The loop cannot go on (the worker died, a round or a swap timed out)."""


def process_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The environment that gives a child ``loopdesk`` process these settings and this Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDESK_")}
    env.update({f"LOOPDESK_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(Settings)})
    env["LOOPDESK_REDIS_URL"] = env["REDIS_URL"] = redis_url
    return env


@contextmanager
def training_worker(settings: Settings, redis_url: str, log_dir: Path,
                    round_config: dict[str, Any]) -> Iterator[subprocess.Popen]:
    """A ``loopdesk worker`` subprocess on the training queue with ``round_config`` as its own (the
    ``--round-config`` file ``log_dir/round-config.json``), logging to ``log_dir/worker.log``; stopped
    (TERM, then KILL) on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = log_dir / "round-config.json"
    config_path.write_text(json.dumps(round_config, indent=2) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "loopdesk.cli", "worker", "--round-config", str(config_path)]
    with open(log_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen(command, env=process_env(settings, redis_url), stdout=log, stderr=subprocess.STDOUT)
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
    """Start the engine and the chat app (rate limits lifted), plus the held-out sandbox app; both
    answer from the real store's knowledge base."""
    from bot.app import create_app
    from bot.runtime.knowledge import LiveKnowledge
    from feedback_store import FeedbackStore
    from feedback_store.server import stop_embedded_redis
    from harness.panel import PinnedEngine

    with ExitStack() as stack:
        settings, store, engine = stack.enter_context(bot_engine(settings))
        knowledge = LiveKnowledge(store, settings)
        stack.callback(knowledge.stop)
        url = stack.enter_context(serve(create_app(settings, engine, store, knowledge)))
        sandbox = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopdesk-heldout-")))
        stack.callback(stop_embedded_redis, sandbox)
        sandbox_settings = settings.replace(data_dir=sandbox, redis_url="", base_model=settings.base_model_ref)
        pinned = PinnedEngine(engine, store.adapters.active())
        held_out_url = stack.enter_context(serve(create_app(
            sandbox_settings, pinned, FeedbackStore.from_settings(sandbox_settings, announce=False), knowledge)))
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


def train_round(store: Any, worker: subprocess.Popen, timeout_s: float, progress: bool) -> Any:
    """Queue a training round for the worker (recording nothing: the worker's config is its own), follow its
    progress stream, return the finished run."""
    run = store.training.enqueue_round(trigger="loop")
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
