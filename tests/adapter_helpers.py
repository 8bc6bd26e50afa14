"""Shared pieces of the adapter tests: LoRA adapters of the test-size model written in the released
directory format (``loopdesk.adapter_format``) and registered, and waiting for an engine to follow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from feedback_store import FeedbackStore
from feedback_store.records import AdapterVersion
from loopdesk.adapter_format import WEIGHTS_FILE, write_manifest


def write_adapter(model: PeftModel, out_dir: Path, version: str, base_model: str, parent: str = "base") -> str:
    """Save ``model``'s adapter with a manifest, as a release leaves it (without a value head); return
    the weights' sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return write_manifest(out_dir, version, base_model, parent)["sha256"]


def adapters_home(store: FeedbackStore) -> Path:
    """Where a test's adapters go: its own folder (its key prefix) inside the store's adapters directory, the
    one a bot on that store serves from (several tests share one data directory and version names)."""
    return store.settings.adapters_dir / store.settings.key_prefix


def register_random_adapter(store: FeedbackStore, base_model_dir: Path, *, seed: int, base_model: str | None = None,
                            corrupt: bool = False, parent: str = "base", out: Path | None = None) -> str:
    """Write a random LoRA adapter under ``out`` (default ``adapters_home``) and register it as a candidate;
    return its version.

    ``base_model`` names another base in its manifest; ``corrupt`` overwrites the end of its weights
    after the checksum was taken.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    lora = LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    version = store.adapters.next_version()
    path = (out or adapters_home(store)) / version
    base = base_model or str(base_model_dir)
    sha = write_adapter(get_peft_model(model, lora), path, version, base, parent=parent)
    if corrupt:
        with open(path / WEIGHTS_FILE, "r+b") as fh:
            fh.seek(-4, 2)
            fh.write(b"\0\0\0\0")
    now = time.time()
    store.adapters.register(AdapterVersion(version=version, path=str(path), sha256=sha, base_model=base,
                                           parent=parent, created_at=now, updated_at=now))
    return version


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
