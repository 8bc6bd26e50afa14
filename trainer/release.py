"""Releasing an adapter: files in place atomically, then the registry, then the status change;
and reading a released one back to start from.

Steps of ``release_adapter``, each undone if a later one fails:

1. copy the trained files into ``<adapters_dir>/.tmp-<version>-<random>``, write ``manifest.json``,
   fsync every file and the directory;
2. rename it to ``<adapters_dir>/<version>`` and fsync ``adapters_dir``;
3. ``store.adapters.register`` (a candidate);
4. the status change: ``canary`` / ``active`` (which announces it) or ``rejected`` with the gate's
   reasons.

A failure before step 3 removes the directory; a failure in step 4 rejects the candidate (reason
"release failed: …"). A process killed between steps 3 and 4 leaves a candidate that the next
round rejects (``reject_orphans``); temporary directories are removed by ``remove_temp_dirs``.

The directory is the one ``loopdesk.adapter_format`` describes: the trained files
(``TRAINED_FILES``: peft's weights and config, the PPO value head) and a manifest with
``metrics`` and ``data_watermark`` besides the required keys.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from feedback_store import FeedbackStore
from feedback_store.records import BASE_VERSION, AdapterVersion

from loopdesk.adapter_format import MANIFEST_FILE, TRAINED_FILES, verify_registered, write_manifest

TEMP_PREFIX = ".tmp-"
ORPHAN_REASON = "orphaned: the run that released it stopped before deciding its status"


class ReleaseError(RuntimeError):
    """Releasing failed; nothing was left registered as a candidate."""


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage(source_dir: Path, target: Path, **manifest: Any) -> str:
    """Write the adapter files and the manifest into ``target``, fsync them; return the sha256."""
    target.mkdir()
    for name in TRAINED_FILES:
        shutil.copyfile(source_dir / name, target / name)
    sha = write_manifest(target, **manifest)["sha256"]
    for name in (*TRAINED_FILES, MANIFEST_FILE):
        _fsync(target / name)
    _fsync(target)
    return sha


def release_adapter(store: FeedbackStore, adapters_dir: Path, source_dir: Path, *, version: str,
                    base_model: str, parent: str, metrics: dict[str, Any], data_watermark: int, status: str,
                    reason: str = "") -> AdapterVersion:
    """Release the trained adapter in ``source_dir`` as ``version`` and give it ``status``.

    ``status`` is ``canary``, ``active`` or ``rejected`` (``reason`` then says why).

    Raises:
        ReleaseError: a step failed; no candidate and no partial directory are left behind.
    """
    if status not in ("canary", "active", "rejected"):
        raise ValueError(f"cannot release an adapter as {status!r}")
    final = adapters_dir / version
    temp = adapters_dir / f"{TEMP_PREFIX}{version}-{secrets.token_hex(4)}"
    now = time.time()
    renamed = False
    try:
        adapters_dir.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        sha = _stage(source_dir, temp, version=version, base_model=base_model, parent=parent,
                     created_at=now, metrics=metrics, data_watermark=data_watermark)
        os.rename(temp, final)
        renamed = True
        _fsync(adapters_dir)
    except Exception as exc:
        shutil.rmtree(final if renamed else temp, ignore_errors=True)
        raise ReleaseError(f"could not write adapter {version} into {adapters_dir}: {exc}") from exc
    try:
        store.adapters.register(AdapterVersion(
            version=version, path=str(final.resolve()), sha256=sha, base_model=base_model, parent=parent,
            metrics=metrics, data_watermark=data_watermark, created_at=now, updated_at=now))
    except Exception as exc:
        shutil.rmtree(final, ignore_errors=True)
        raise ReleaseError(f"could not register adapter {version}: {exc}") from exc
    try:
        if status == "canary":
            return store.adapters.send_to_canary(version, reason)
        if status == "active":
            return store.adapters.promote(version, reason)
        return store.adapters.reject(version, reason or "rejected by the gate")
    except Exception as exc:
        store.adapters.reject(version, f"release failed: {exc}"[:500])
        raise ReleaseError(f"adapter {version} was registered but could not become {status}: {exc}") from exc


def reject_orphans(store: FeedbackStore) -> list[str]:
    """Reject candidates left by a killed run (call while holding the run lock); returns their versions."""
    orphans = [a.version for a in store.adapters.list(limit=1000) if a.status == "candidate"]
    for version in orphans:
        store.adapters.reject(version, ORPHAN_REASON)
    return orphans


def remove_temp_dirs(adapters_dir: Path) -> list[Path]:
    """Delete half-written ``.tmp-*`` directories (call while holding the run lock)."""
    removed = []
    if adapters_dir.is_dir():
        for path in adapters_dir.glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def released_dir(store: FeedbackStore, adapters_dir: Path, version: str, base_model: str) -> Path | None:
    """The directory of released ``version`` to start a round from (and gate against), resolved: inside
    ``adapters_dir`` and checked against the contract and the registry's sha256, value head included
    (``verify_registered``); None for ``base`` (no adapter).

    Raises:
        InvalidAdapterError: the record's path lies outside ``adapters_dir``, or the directory is not a
            released adapter of ``base_model``.
        NotFoundError: the registry has no such version.
    """
    if version == BASE_VERSION:
        return None
    record = store.adapters.get(version)
    return verify_registered(record.path, adapters_dir, base_model, version=version, expected_sha256=record.sha256,
                             value_head=True)
