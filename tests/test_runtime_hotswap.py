"""Adapter hot-swap into the in-process worker on the real test-size model: swaps and a rollback under
load fail no request, and replies and their log-probs are the adapter's. What the follower does with
either engine (promotion, canary share, refusals) is in test_adapter_follower."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

import bot.runtime.follower
from bot.runtime import Engine
from bot.runtime.errors import GenerationError
from bot.runtime.routing import Routing
from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.adapter_helpers import register_random_adapter, wait_for
from tests.replay_helpers import replayed_logprobs

ASK = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def engine(settings: Settings, store: FeedbackStore, base_model_dir: Path) -> Engine:
    engine = Engine(settings.replace(base_model=str(base_model_dir), max_reply_tokens=12), store,
                    idle_unload_s=0.0)
    engine.start()
    yield engine
    engine.stop()


def test_adapter_swaps_under_load_fail_no_request(engine: Engine, store: FeedbackStore, base_model_dir: Path) -> None:
    stop = threading.Event()
    failures: list[BaseException] = []
    served: list[str] = []

    def customer() -> None:
        while not stop.is_set():
            try:
                served.append(engine.generate(ASK, engine.choose_version()).adapter_version)
            except BaseException as exc:  # any failure counts
                failures.append(exc)

    clients = [threading.Thread(target=customer) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        previous = "base"
        for seed in range(3):
            version = register_random_adapter(store, base_model_dir, seed=seed, parent=previous)
            store.adapters.promote(version)
            wait_for(lambda: engine.choose_version() == version)
            assert engine.generate(ASK, engine.choose_version()).adapter_version == version
            wait_for(lambda: previous not in engine.loaded_versions() or previous == "base")
            previous = version
        rolled_back_to = store.adapters.rollback("canary CSAT fell")
        wait_for(lambda: engine.choose_version() == rolled_back_to)
        assert engine.generate(ASK, previous).adapter_version == rolled_back_to
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert failures == []
    assert len(set(served)) >= 3


def test_adapter_changes_replies_and_logprobs_match_it(engine: Engine, store: FeedbackStore,
                                                      base_model_dir: Path) -> None:
    version = register_random_adapter(store, base_model_dir, seed=7)
    store.adapters.send_to_canary(version)
    wait_for(lambda: version in engine.loaded_versions())
    gen = engine.generate(ASK, version)
    assert gen.adapter_version == version
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), store.adapters.get(version).path)

    def replay(model) -> list[float]:  # under the figure guard the engine sampled with
        return replayed_logprobs(model, gen.prompt_token_ids, gen.reply_token_ids, engine.settings.temperature,
                                 engine.figure_guard(gen.grounds), engine.settings.max_reply_tokens)

    expected = replay(policy)
    with policy.disable_adapter():
        under_base = replay(policy)
    assert gen.logprobs == pytest.approx(expected, abs=1e-4)
    assert gen.logprobs != pytest.approx(under_base, abs=1e-3)
    assert engine.generate(ASK, "base").adapter_version == "base"



def test_an_adapter_is_verified_read_and_installed_on_the_worker_thread_between_steps(
        engine: Engine, store: FeedbackStore, base_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the follower's thread that Python work slowed the decode steps it overlapped (bench/README.md)."""
    threads: list[tuple[str, str]] = []
    for name in ("verify_registered", "read_adapter"):
        original = getattr(bot.runtime.follower, name)

        def recorded(*args, _name=name, _original=original, **kwargs):
            threads.append((_name, threading.current_thread().name))
            return _original(*args, **kwargs)

        monkeypatch.setattr(bot.runtime.follower, name, recorded)
    version = register_random_adapter(store, base_model_dir, seed=3)
    store.adapters.promote(version)
    wait_for(lambda: engine.choose_version() == version)
    assert threads == [("verify_registered", "loopdesk-generation"), ("read_adapter", "loopdesk-generation")]
    assert engine.generate(ASK, version).adapter_version == version


def test_work_for_a_stopped_worker_fails_instead_of_waiting_forever(engine: Engine) -> None:
    worker = engine._worker
    engine.stop()
    with pytest.raises(GenerationError, match="stopped"):
        worker.between_steps(lambda: "never run").result(timeout=5)


def test_a_version_installed_again_while_it_retires_is_not_unloaded_before_it_serves() -> None:
    """A rollback loads a version whose retirement (nothing uses it) may not have happened yet."""
    routing = Routing()
    routing.make_routable("v2")
    routing.retire("v2", after_idle_s=0.0)
    routing.keep("v2")  # the worker installs it again
    assert routing.take_idle(in_use=set()) == []
    assert "v2" not in routing.loaded_versions()  # routable only once probed
    routing.make_routable("v2")
    assert routing.take_idle(in_use=set()) == [] and "v2" in routing.loaded_versions()
    routing.retire("v2", after_idle_s=0.0)  # retired again later: unloaded as before
    assert routing.take_idle(in_use=set()) == ["v2"]
