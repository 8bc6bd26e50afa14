"""Adapter hot-swap on the real test-size model: swaps under load, rollback, refused adapters."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from bot.runtime import Engine, write_adapter
from feedback_store import FeedbackStore
from feedback_store.records import AdapterVersion
from loopdesk.config import Settings

ASK = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def engine(settings: Settings, store: FeedbackStore, base_model_dir: Path) -> Engine:
    engine = Engine(settings.replace(base_model=str(base_model_dir), max_reply_tokens=12), store,
                    idle_unload_s=0.0)
    engine.start()
    yield engine
    engine.stop()


def publish(store: FeedbackStore, base_model_dir: Path, out: Path, *, seed: int,
            base_model: str | None = None, corrupt: bool = False, parent: str = "base") -> str:
    """Write a random LoRA adapter in the published format and register it as a candidate."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    lora = LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    version = store.adapters.next_version()
    path = out / version
    sha = write_adapter(peft_model, path, version, base_model or str(base_model_dir), parent=parent)
    if corrupt:
        with open(path / "adapter_model.safetensors", "r+b") as fh:
            fh.seek(-4, 2)
            fh.write(b"\0\0\0\0")
    now = time.time()
    store.adapters.register(AdapterVersion(version=version, path=str(path), sha256=sha,
                                           base_model=json.loads((path / "manifest.json").read_text())["base_model"],
                                           parent=parent, created_at=now, updated_at=now))
    return version


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_adapter_swaps_under_load_fail_no_request(engine: Engine, store: FeedbackStore, base_model_dir: Path,
                                                  tmp_path: Path) -> None:
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
            version = publish(store, base_model_dir, tmp_path, seed=seed, parent=previous)
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
                                                      base_model_dir: Path, tmp_path: Path) -> None:
    version = publish(store, base_model_dir, tmp_path, seed=7)
    store.adapters.send_to_canary(version)
    wait_for(lambda: version in engine.loaded_versions())
    gen = engine.generate(ASK, version)
    assert gen.adapter_version == version
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), str(tmp_path / version))
    ids = torch.tensor([gen.prompt_token_ids + gen.reply_token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(policy(ids).logits[0] / engine.settings.temperature, dim=-1)
        with policy.disable_adapter():
            base_logp = torch.log_softmax(policy(ids).logits[0] / engine.settings.temperature, dim=-1)
    start = len(gen.prompt_token_ids) - 1
    expected = [logp[start + i, t].item() for i, t in enumerate(gen.reply_token_ids)]
    under_base = [base_logp[start + i, t].item() for i, t in enumerate(gen.reply_token_ids)]
    assert gen.logprobs == pytest.approx(expected, abs=1e-4)
    assert gen.logprobs != pytest.approx(under_base, abs=1e-3)
    assert engine.generate(ASK, "base").adapter_version == "base"


@pytest.mark.parametrize("problem", ["bad_sha256", "wrong_base"])
def test_bad_adapter_is_refused_and_the_old_one_keeps_serving(
        problem: str, engine: Engine, store: FeedbackStore, base_model_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    good = publish(store, base_model_dir, tmp_path, seed=1)
    store.adapters.promote(good)
    wait_for(lambda: engine.choose_version() == good)
    bad = publish(store, base_model_dir, tmp_path, seed=2, parent=good, corrupt=problem == "bad_sha256",
                  base_model="someone/else-7b" if problem == "wrong_base" else None)
    with caplog.at_level(logging.ERROR, logger="bot.runtime"):
        store.adapters.promote(bad)
        wait_for(lambda: any("refused" in r.getMessage() for r in caplog.records))
    reason = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert ("sha256" if problem == "bad_sha256" else "base model") in reason
    assert bad not in engine.loaded_versions()
    assert engine.choose_version() == good
    assert engine.generate(ASK, bad).adapter_version == good
