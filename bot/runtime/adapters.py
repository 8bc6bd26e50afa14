"""Writing adapters in the published format (``loopdesk.adapter_format``) and verifying them
before serving: checksum against manifest and registry, same base model (two local paths naming
the same directory match), finite weights of the right shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from loopdesk.adapter_format import CONFIG_FILE, WEIGHTS_FILE, read_manifest, sha256_file, write_manifest


class AdapterRefused(Exception):
    """An adapter failed verification; the message says why, for the log."""


@dataclass(frozen=True)
class VerifiedAdapter:
    """An adapter read from disk whose checksum, base model and weights were checked."""

    version: str
    config: LoraConfig
    weights: dict[str, torch.Tensor]


def same_base_model(a: str, b: str) -> bool:
    """Whether two base model references name the same model (hub ids equal, or one local dir)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def write_adapter(model: PeftModel, out_dir: str | Path, version: str, base_model: str,
                  parent: str = "base", adapter_name: str = "default") -> str:
    """Save ``model``'s adapter ``adapter_name`` in the published format; return the weights' sha256."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), selected_adapters=[adapter_name])
    saved = out / adapter_name if adapter_name != "default" else out
    if saved != out:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            (saved / name).replace(out / name)
        saved.rmdir()
    return write_manifest(out, version, base_model, parent)["sha256"]


def read_verified(path: str | Path, version: str, base_model: str,
                  expected_sha256: str | None = None) -> VerifiedAdapter:
    """Read an adapter directory and check it can be served on ``base_model``.

    Raises:
        AdapterRefused: missing files, a checksum differing from the manifest (or from the
            registry's ``expected_sha256``), another base model, or non-finite weights.
    """
    directory = Path(path)
    try:
        manifest = read_manifest(directory)
        config = LoraConfig.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as exc:
        raise AdapterRefused(f"{version}: unreadable adapter directory {directory}: {exc}") from exc
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterRefused(f"{version}: {weights_path} is missing")
    actual = sha256_file(weights_path)
    for source, expected in (("manifest", manifest.get("sha256")), ("registry", expected_sha256)):
        if expected is not None and expected != actual:
            raise AdapterRefused(f"{version}: sha256 of {WEIGHTS_FILE} is {actual}, {source} says {expected}")
    if not manifest.get("sha256"):
        raise AdapterRefused(f"{version}: manifest has no sha256")
    if not same_base_model(str(manifest.get("base_model", "")), base_model):
        raise AdapterRefused(
            f"{version}: trained on base model {manifest.get('base_model')!r}, this bot serves {base_model!r}")
    try:
        weights = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise AdapterRefused(f"{version}: cannot read {WEIGHTS_FILE}: {exc}") from exc
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise AdapterRefused(f"{version}: non-finite weights in {bad[:3]}")
    return VerifiedAdapter(version=version, config=config, weights=weights)

