"""The adapter directory: what a released adapter version holds, and the one check of it.

An adapter version lives in one directory::

    adapter_model.safetensors   LoRA weights, as peft's ``save_pretrained`` writes them
    adapter_config.json         peft's LoraConfig, same origin
    value_head.safetensors      the PPO value head (the trainer resumes from it; a bot ignores it)
    manifest.json               what the directory is: the keys below

Manifest keys (``MANIFEST_KEYS``, all required): ``version`` (the name it was released as),
``sha256`` (hex digest of ``adapter_model.safetensors``), ``base_model`` (the
``Settings.base_model_ref`` it was trained on), ``parent`` (the version it started from, ``base``
for none) and ``created_at`` (Unix seconds). A release adds ``metrics`` and ``data_watermark``;
further keys are allowed.

The trainer writes the first three files (``TRAINED_FILES``, ``PolicyWithValueHead.save_pretrained``)
and, before its gate, a manifest naming the version the candidate will be released as; releasing
copies the three files into ``<adapters_dir>/<version>`` and writes the manifest anew
(``write_manifest``). ``verify`` is the check of a directory. ``verify_registered`` is the check every
reader of a registry record runs, since a record in Redis may name any path: the directory must lie
inside the adapters directory (symlinks resolved), then ``verify`` with the registry's sha256. The bot
runs it before it serves a version, the trainer before it starts a round from one (and gates
against it), the gate's panel before customers meet the active one. This module imports neither torch
nor peft.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
VALUE_HEAD_FILE = "value_head.safetensors"
MANIFEST_FILE = "manifest.json"
TRAINED_FILES = (WEIGHTS_FILE, CONFIG_FILE, VALUE_HEAD_FILE)
MANIFEST_KEYS = ("version", "sha256", "base_model", "parent", "created_at")


class InvalidAdapterError(Exception):
    """An adapter that must not be used (broken files, another base model); the message says why."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_base_model(a: str, b: str) -> bool:
    """Whether two base model references name the same model (hub ids equal, or one local dir)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def write_manifest(directory: Path, version: str, base_model: str, parent: str, **extra: Any) -> dict[str, Any]:
    """Write ``manifest.json`` for the weights already in ``directory``; return it."""
    manifest = {"version": version, "sha256": sha256_file(directory / WEIGHTS_FILE), "base_model": base_model,
                "parent": parent, "created_at": extra.pop("created_at", time.time()), **extra}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an adapter directory (raises OSError / ValueError when unreadable)."""
    return json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))


def verify(directory: str | Path, base_model: str, *, version: str | None = None,
           expected_sha256: str | None = None, value_head: bool = False) -> dict[str, Any]:
    """Check an adapter directory against the contract above; return its manifest.

    Args:
        directory: the adapter directory.
        base_model: the base model reference it must have been trained on.
        version: the name it goes by, for the messages (default: the directory's name).
        expected_sha256: the weights' digest the registry recorded, checked as the manifest's is.
        value_head: also require ``value_head.safetensors`` (a trainer resuming PPO from it).

    Raises:
        InvalidAdapterError: a missing file, an unreadable or incomplete manifest, weights whose
            sha256 differs from the manifest's (or ``expected_sha256``), or another base model.
    """
    directory = Path(directory)
    name = version or directory.name
    required = (WEIGHTS_FILE, CONFIG_FILE, *((VALUE_HEAD_FILE,) if value_head else ()), MANIFEST_FILE)
    missing = [file for file in required if not (directory / file).is_file()]
    if missing:
        raise InvalidAdapterError(f"{name}: {directory} lacks {', '.join(missing)}")
    try:
        manifest = read_manifest(directory)
    except (OSError, ValueError) as exc:
        raise InvalidAdapterError(f"{name}: unreadable {MANIFEST_FILE} in {directory}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise InvalidAdapterError(f"{name}: {MANIFEST_FILE} in {directory} is not a JSON object")
    absent = [key for key in MANIFEST_KEYS if manifest.get(key) in (None, "")]
    if absent:
        raise InvalidAdapterError(f"{name}: {MANIFEST_FILE} in {directory} has no {', '.join(absent)}")
    actual = sha256_file(directory / WEIGHTS_FILE)
    for source, expected in (("manifest", manifest["sha256"]), ("registry", expected_sha256)):
        if expected is not None and expected != actual:
            raise InvalidAdapterError(f"{name}: sha256 of {WEIGHTS_FILE} is {actual}, {source} says {expected}")
    if not same_base_model(str(manifest["base_model"]), base_model):
        raise InvalidAdapterError(
            f"{name}: trained on base model {manifest['base_model']!r}, not on {base_model!r}")
    return manifest


def verify_registered(path: str | Path, adapters_dir: str | Path, base_model: str, *, version: str,
                      expected_sha256: str, value_head: bool = False) -> Path:
    """Check the adapter a registry record names (its ``path`` and ``sha256``); return its directory, resolved.

    Args:
        path: the record's path; a relative one is taken from ``adapters_dir``.
        adapters_dir: the adapters directory (``Settings.adapters_dir``) the directory must lie inside,
            after every symlink is resolved.
        base_model, version, value_head: as for ``verify``.
        expected_sha256: the weights' digest the registry recorded.

    Raises:
        InvalidAdapterError: the directory lies outside ``adapters_dir`` (or is it), or ``verify`` fails.
    """
    root = Path(adapters_dir).resolve()
    directory = (root / path).resolve()
    if directory == root or not directory.is_relative_to(root):
        raise InvalidAdapterError(f"{version}: the registry's path {path} lies outside the adapters directory "
                                  f"{root}; refused")
    verify(directory, base_model, version=version, expected_sha256=expected_sha256, value_head=value_head)
    return directory
