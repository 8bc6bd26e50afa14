"""The adapter directory's contract (``loopdesk.adapter_format``): a directory that keeps it verifies,
each way of breaking it is refused with a message naming the breach, a registry record's path must lie
inside the adapters directory, and the check needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loopdesk.adapter_format import (CONFIG_FILE, MANIFEST_FILE, MANIFEST_KEYS, VALUE_HEAD_FILE, WEIGHTS_FILE,
                                     InvalidAdapterError, verify, verify_registered, write_manifest)

ROOT = Path(__file__).resolve().parents[1]


def released(path: Path, base_model: str = "org/tiny") -> dict:
    """A directory with stand-in files in the contract's layout; returns its manifest."""
    path.mkdir(parents=True)
    (path / WEIGHTS_FILE).write_bytes(b"lora weights")
    (path / CONFIG_FILE).write_text("{}")
    (path / VALUE_HEAD_FILE).write_bytes(b"value head")
    return write_manifest(path, "v0001", base_model, "base", metrics={"gate_passed": True}, data_watermark=3)


def test_a_directory_that_keeps_the_contract_verifies_and_gives_its_manifest(tmp_path):
    manifest = released(tmp_path / "v0001")
    assert set(MANIFEST_KEYS) <= set(manifest) and manifest["data_watermark"] == 3
    assert verify(tmp_path / "v0001", "org/tiny", expected_sha256=manifest["sha256"], value_head=True) == manifest
    (tmp_path / "v0001" / VALUE_HEAD_FILE).unlink()
    assert verify(tmp_path / "v0001", "org/tiny") == manifest  # a bot serves it without the trainer's value head
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    released(tmp_path / "local", base_model=str(model_dir))
    assert verify(tmp_path / "local", str(model_dir / ".." / "tiny"))  # one local directory, two spellings


def _drop_config(d: Path) -> None:
    (d / CONFIG_FILE).unlink()


def _drop_parent(d: Path) -> None:
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    del manifest["parent"]
    (d / MANIFEST_FILE).write_text(json.dumps(manifest))


BREACHES = {
    "missing config": (_drop_config, {}, f"lacks {CONFIG_FILE}"),
    "missing value head": (lambda d: (d / VALUE_HEAD_FILE).unlink(), {"value_head": True}, f"lacks {VALUE_HEAD_FILE}"),
    "manifest not JSON": (lambda d: (d / MANIFEST_FILE).write_text("{"), {}, f"unreadable {MANIFEST_FILE}"),
    "manifest key missing": (_drop_parent, {}, "has no parent"),
    "weights changed": (lambda d: (d / WEIGHTS_FILE).write_bytes(b"other weights"), {}, "manifest says"),
    "registry's sha256 differs": (lambda d: None, {"expected_sha256": "0" * 64}, "registry says"),
    "another base model": (lambda d: None, {"base_model": "someone/else-7b"}, "base model 'org/tiny'"),
}


@pytest.mark.parametrize("breach", BREACHES)
def test_each_breach_of_the_contract_is_refused_by_name(breach, tmp_path):
    damage, options, message = BREACHES[breach]
    released(tmp_path / "v0001")
    damage(tmp_path / "v0001")
    options = {"base_model": "org/tiny", **options}
    with pytest.raises(InvalidAdapterError, match=message):
        verify(tmp_path / "v0001", options.pop("base_model"), version="v0001", **options)


def test_a_registered_adapter_is_read_from_inside_the_adapters_directory_only(tmp_path):
    adapters = tmp_path / "adapters"
    sha = released(adapters / "v0001")["sha256"]
    released(tmp_path / "elsewhere" / "v0001")  # sound files, the same weights, outside
    check = dict(version="v0001", expected_sha256=sha)
    assert verify_registered(adapters / "v0001", adapters, "org/tiny", **check) == (adapters / "v0001").resolve()
    assert verify_registered("v0001", adapters, "org/tiny", **check) == (adapters / "v0001").resolve()  # relative
    (adapters / "link").symlink_to(tmp_path / "elsewhere" / "v0001")
    for outside in (tmp_path / "elsewhere" / "v0001", adapters / "link", adapters / ".." / "elsewhere" / "v0001",
                    "../elsewhere/v0001", adapters, "/etc"):
        with pytest.raises(InvalidAdapterError, match=f"v0001: the registry's path {outside} lies outside the "
                                                      f"adapters directory {adapters.resolve()}; refused"):
            verify_registered(outside, adapters, "org/tiny", **check)
    with pytest.raises(InvalidAdapterError, match="registry says"):
        verify_registered(adapters / "v0001", adapters, "org/tiny", version="v0001", expected_sha256="0" * 64)


def test_the_contract_imports_neither_torch_nor_peft():
    script = "import sys, loopdesk.adapter_format; print(sorted({'torch', 'peft'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
