"""The published adapter directory format, shared by its writer (the trainer) and its reader (the bot).

An adapter version lives in one directory::

    adapter_model.safetensors   LoRA weights, as peft's ``save_pretrained`` writes them
    adapter_config.json         peft's LoraConfig, same origin
    manifest.json               {"version", "sha256", "base_model", "parent", "created_at", ...}

``sha256`` is the hex digest of ``adapter_model.safetensors``; ``base_model`` is the
``Settings.base_model_ref`` the adapter was trained on. Extra manifest keys (metrics, data
watermark) are allowed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, version: str, base_model: str, parent: str, **extra: Any) -> dict[str, Any]:
    """Write ``manifest.json`` for the weights already in ``directory``; return it."""
    manifest = {"version": version, "sha256": sha256_file(directory / WEIGHTS_FILE), "base_model": base_model,
                "parent": parent, "created_at": extra.pop("created_at", time.time()), **extra}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an adapter directory (raises OSError / ValueError when unreadable)."""
    return json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
