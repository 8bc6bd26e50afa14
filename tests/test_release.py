"""Releasing an adapter is atomic: files fsynced and renamed into place, then registry, then status;
any failure leaves no candidate and no partial directory. A released adapter is verified before a
round starts from it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from bot.runtime.adapters import read_verified
from loopdesk.adapter_format import VALUE_HEAD_FILE, WEIGHTS_FILE, InvalidAdapterError
from trainer.config import PPOConfig
from trainer.policy import PolicyWithValueHead
from trainer.release import ReleaseError, release_adapter, released_dir, remove_temp_dirs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter_source(base_model_dir, tmp_path_factory) -> Path:
    """A freshly initialised LoRA adapter + value head, as PPO saves it."""
    path = tmp_path_factory.mktemp("candidate")
    PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(base_model_dir),
                                         PPOConfig()).save_pretrained(path)
    return path


def _release(store, adapters_dir: Path, source: Path, base_model_dir, status: str = "canary", version: str = "v0001"):
    return release_adapter(store, adapters_dir, source, version=version, base_model=str(base_model_dir),
                           parent="base", metrics={"gate_passed": True}, data_watermark=7, status=status,
                           reason="test")


def _nothing_left(store, adapters_dir: Path) -> None:
    assert store.adapters.list() == []
    assert not adapters_dir.exists() or list(adapters_dir.iterdir()) == []


def test_released_adapter_is_in_place_registered_and_verifiable_by_the_bot(store, tmp_path, adapter_source,
                                                                           base_model_dir):
    adapters_dir = tmp_path / "adapters"
    adapter = _release(store, adapters_dir, adapter_source, base_model_dir)
    assert adapter.status == "canary" and store.adapters.canary() == "v0001"
    directory = adapters_dir / "v0001"
    assert sorted(os.listdir(adapters_dir)) == ["v0001"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["sha256"] == store.adapters.get("v0001").sha256
    assert manifest["data_watermark"] == 7 and manifest["parent"] == "base" and manifest["metrics"]["gate_passed"]
    assert (directory / "value_head.safetensors").is_file()
    verified = read_verified(str(directory), "v0001", str(base_model_dir), adapters_dir=adapters_dir,
                             expected_sha256=manifest["sha256"])
    assert verified.version == "v0001"


def test_rejected_release_keeps_the_files_and_the_reason(store, tmp_path, adapter_source, base_model_dir):
    adapter = release_adapter(store, tmp_path, adapter_source, version="v0001", base_model=str(base_model_dir),
                              parent="base", metrics={}, data_watermark=0, status="rejected", reason="KL over budget")
    assert adapter.status == "rejected" and store.adapters.get("v0001").reason == "KL over budget"
    assert (tmp_path / "v0001" / "manifest.json").is_file()


def test_unwritable_target_leaves_nothing(store, tmp_path, adapter_source, base_model_dir):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ReleaseError, match="could not write"):
        _release(store, blocker / "adapters", adapter_source, base_model_dir)
    assert store.adapters.list() == []


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small real tmpfs (as root, as the test machines run) and unmount it after."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=True)


def test_read_only_disk_leaves_nothing(store, tmpfs, adapter_source, base_model_dir):
    adapters_dir = tmpfs("readonly", "ro,size=1m")
    with pytest.raises(ReleaseError, match="Read-only file system"):
        _release(store, adapters_dir, adapter_source, base_model_dir)
    _nothing_left(store, adapters_dir)


def test_full_disk_leaves_no_partial_directory(store, tmpfs, adapter_source, base_model_dir):
    adapters_dir = tmpfs("full", "size=256k")
    needed = sum(f.stat().st_size for f in adapter_source.iterdir())
    filler = adapters_dir / "filler"
    filler.write_bytes(b"\0" * (256 * 1024 - max(needed // 2, 4096)))  # less room than the adapter needs
    with pytest.raises(ReleaseError, match="No space left"):
        _release(store, adapters_dir, adapter_source, base_model_dir)
    filler.unlink()
    _nothing_left(store, adapters_dir)


def test_failed_status_change_rejects_the_candidate(store, tmp_path, adapter_source, base_model_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(store.adapters, "send_to_canary", broken)
    with pytest.raises(ReleaseError, match="could not become canary"):
        _release(store, tmp_path, adapter_source, base_model_dir)
    adapter = store.adapters.get("v0001")
    assert adapter.status == "rejected" and "release failed" in adapter.reason


def test_an_existing_version_directory_is_never_overwritten(store, tmp_path, adapter_source, base_model_dir):
    (tmp_path / "v0001").mkdir()
    (tmp_path / "v0001" / "keep").write_text("x")
    with pytest.raises(ReleaseError, match="already exists"):
        _release(store, tmp_path, adapter_source, base_model_dir)
    assert (tmp_path / "v0001" / "keep").read_text() == "x" and store.adapters.list() == []


def test_leftover_temp_directories_are_removed(tmp_path):
    (tmp_path / ".tmp-v0003-abcd").mkdir()
    (tmp_path / "v0002").mkdir()
    assert [p.name for p in remove_temp_dirs(tmp_path)] == [".tmp-v0003-abcd"]
    assert os.listdir(tmp_path) == ["v0002"]


def test_a_round_starts_only_from_a_released_adapter_that_verifies(store, tmp_path, adapter_source, base_model_dir):
    base = str(base_model_dir)
    _release(store, tmp_path, adapter_source, base_model_dir, status="active")
    assert released_dir(store, tmp_path, "base", base) is None
    assert released_dir(store, tmp_path, "v0001", base) == (tmp_path / "v0001").resolve()
    with pytest.raises(InvalidAdapterError, match="base model"):
        released_dir(store, tmp_path, "v0001", "someone/else-7b")
    (tmp_path / "v0001" / VALUE_HEAD_FILE).rename(tmp_path / "value_head")
    with pytest.raises(InvalidAdapterError, match=f"lacks {VALUE_HEAD_FILE}"):
        released_dir(store, tmp_path, "v0001", base)
    (tmp_path / "value_head").rename(tmp_path / "v0001" / VALUE_HEAD_FILE)
    with open(tmp_path / "v0001" / WEIGHTS_FILE, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\1\2\3\4")  # a fresh adapter's B matrices end in zeros
    with pytest.raises(InvalidAdapterError, match="sha256"):
        released_dir(store, tmp_path, "v0001", base)


def test_a_round_refuses_an_active_adapter_the_registry_places_outside_the_adapters_dir(
        store, tmp_path, adapter_source, base_model_dir):
    adapters_dir = tmp_path / "adapters"
    record = _release(store, tmp_path / "elsewhere", adapter_source, base_model_dir, status="active")
    assert released_dir(store, tmp_path / "elsewhere", "v0001", str(base_model_dir))  # sound, where it lies
    with pytest.raises(InvalidAdapterError, match=f"v0001: the registry's path {record.path} lies outside the "
                                                  "adapters directory"):
        released_dir(store, adapters_dir, "v0001", str(base_model_dir))
