"""The adapter follower with both engines it serves: the in-process model (real test-size model) and a
vLLM server (``StandInVllm``, answering like vLLM's OpenAI-compatible API). Promotion, rollback,
the canary share, unloading and refused adapters behave the same on both."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from bot.runtime import Engine
from bot.runtime.vllm_backend import VllmEngine
from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.adapter_helpers import register_random_adapter, wait_for
from tests.vllm_helpers import StandInVllm
from harness.serving import serve

ASK = [{"role": "user", "content": "Where is my order?"}]
IDLE_UNLOAD_S = 600.0  # longer than any test: a retired version stays until it is rejected
RESYNC_S = 0.1


class Followed:
    """A started engine of one kind, and what its vLLM stand-in was asked to load and unload."""

    def __init__(self, engine: Engine | VllmEngine, vllm: StandInVllm | None):
        self.engine = engine
        self.vllm = vllm

    def vllm_calls(self) -> tuple[list[str], list[str]]:
        """The versions loaded into and unloaded from the stand-in, in order."""
        return [b["lora_name"] for b in self.vllm.loads], [b["lora_name"] for b in self.vllm.unloads]


@pytest.fixture(params=["in_process", "vllm"])
def followed(request, settings: Settings, store: FeedbackStore, base_model_dir: Path) -> Followed:
    settings = settings.replace(base_model=str(base_model_dir), max_reply_tokens=8)
    if request.param == "in_process":
        engine = Engine(settings, store, idle_unload_s=IDLE_UNLOAD_S, resync_s=RESYNC_S)
        engine.start()
        yield Followed(engine, None)
        engine.stop()
        return
    from transformers import AutoTokenizer

    vllm = StandInVllm(AutoTokenizer.from_pretrained(base_model_dir).eos_token_id)
    with serve(vllm.app) as url:
        engine = VllmEngine(settings.replace(vllm_url=url), store, idle_unload_s=IDLE_UNLOAD_S, resync_s=RESYNC_S)
        engine.start()
        yield Followed(engine, vllm)
        engine.stop()


def test_promotion_and_rollback_are_followed_and_a_rejected_version_unloaded(
        followed: Followed, store: FeedbackStore, base_model_dir: Path) -> None:
    engine = followed.engine
    first = register_random_adapter(store, base_model_dir, seed=1)
    store.adapters.promote(first)
    wait_for(lambda: engine.choose_version() == first)
    assert engine.generate(ASK, first).adapter_version == first

    second = register_random_adapter(store, base_model_dir, seed=2, parent=first)
    store.adapters.promote(second)
    wait_for(lambda: engine.choose_version() == second)
    assert engine.generate(ASK, second).adapter_version == second
    assert first in engine.loaded_versions()  # retired, not idle long enough: its conversations keep it
    assert engine.generate(ASK, first).adapter_version == first

    assert store.adapters.rollback("canary CSAT fell") == first
    wait_for(lambda: engine.choose_version() == first)
    wait_for(lambda: second not in engine.loaded_versions())  # rejected: gone at once
    assert engine.generate(ASK, second).adapter_version == first
    assert engine.loaded_versions() == sorted(["base", first])
    if followed.vllm is not None:
        assert followed.vllm_calls() == ([first, second], [second])


def test_a_canary_gets_its_share_of_new_conversations_until_rejected(
        followed: Followed, store: FeedbackStore, base_model_dir: Path) -> None:
    engine = followed.engine
    canary = register_random_adapter(store, base_model_dir, seed=3)
    store.adapters.set_canary_share(1.0)
    store.adapters.send_to_canary(canary)
    wait_for(lambda: engine.choose_version() == canary)
    store.adapters.set_canary_share(0.0)
    assert {engine.choose_version() for _ in range(50)} == {"base"}
    store.adapters.set_canary_share(0.5)
    assert {engine.choose_version() for _ in range(200)} == {"base", canary}

    store.adapters.reject(canary, "canary CSAT fell")
    wait_for(lambda: canary not in engine.loaded_versions())
    assert engine.generate(ASK, canary).adapter_version == "base"
    assert {engine.choose_version() for _ in range(50)} == {"base"}
    if followed.vllm is not None:
        assert followed.vllm_calls() == ([canary], [canary])


REFUSAL = {"bad_sha256": "sha256", "wrong_base": "base model", "outside": "lies outside the adapters directory"}


@pytest.mark.parametrize("problem", list(REFUSAL))
def test_a_bad_adapter_is_refused_once_and_the_old_one_keeps_serving(
        problem: str, followed: Followed, store: FeedbackStore, base_model_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    engine = followed.engine
    good = register_random_adapter(store, base_model_dir, seed=1)
    store.adapters.promote(good)
    wait_for(lambda: engine.choose_version() == good)
    bad = register_random_adapter(store, base_model_dir, seed=2, parent=good,
                                  corrupt=problem == "bad_sha256",
                                  base_model="someone/else-7b" if problem == "wrong_base" else None,
                                  out=tmp_path if problem == "outside" else None)  # sound files, any path
    with caplog.at_level(logging.ERROR, logger="bot.runtime"):
        store.adapters.promote(bad)
        wait_for(lambda: bad in engine.refused_versions())
        time.sleep(5 * RESYNC_S)  # several syncs: a refused version is not tried again
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert REFUSAL[problem] in refusals[0]
    assert engine.refused_versions()[bad] in refusals[0]
    assert bad not in engine.loaded_versions()
    assert engine.choose_version() == good
    assert engine.generate(ASK, bad).adapter_version == good
    if followed.vllm is not None:
        assert followed.vllm_calls() == ([good], [])
