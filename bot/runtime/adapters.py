"""Reading an adapter directory for serving: the contract's check (``loopdesk.adapter_format.verify_registered``:
inside the adapters directory, files, checksum against manifest and registry, base model), then peft's
config and the weights, which must all be finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import load_file

from loopdesk.adapter_format import CONFIG_FILE, WEIGHTS_FILE, InvalidAdapterError, verify_registered


@dataclass(frozen=True)
class VerifiedAdapter:
    """An adapter read from disk whose checksum, base model and weights were checked."""

    version: str
    path: Path
    config: LoraConfig
    weights: dict[str, torch.Tensor]


def read_verified(path: str | Path, version: str, base_model: str, *, adapters_dir: str | Path,
                  expected_sha256: str) -> VerifiedAdapter:
    """Read the adapter directory a registry record names (``path``, ``expected_sha256``) and check it can be
    served on ``base_model``; ``path`` in the result is the resolved directory.

    Raises:
        InvalidAdapterError: the directory lies outside ``adapters_dir`` or breaks the contract
            (``verify_registered``), its config is not peft's, or its weights are unreadable or not finite.
    """
    directory = verify_registered(path, adapters_dir, base_model, version=version, expected_sha256=expected_sha256)
    return read_adapter(directory, version)


def read_adapter(directory: Path, version: str) -> VerifiedAdapter:
    """``read_verified``'s second half, for a directory ``verify_registered`` passed: peft's config and the
    weights, which must all be finite.

    Raises:
        InvalidAdapterError: an unreadable config, unreadable or non-finite weights.
    """
    try:
        config = LoraConfig.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidAdapterError(f"{version}: unreadable {CONFIG_FILE} in {directory}: {exc}") from exc
    try:
        weights = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InvalidAdapterError(f"{version}: cannot read {WEIGHTS_FILE}: {exc}") from exc
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise InvalidAdapterError(f"{version}: non-finite weights in {bad[:3]}")
    return VerifiedAdapter(version=version, path=directory, config=config, weights=weights)
