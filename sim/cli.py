"""``loopdesk bootstrap``: build the tiny demo base model from the bundled company's corpus."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sim.bootstrap import MANIFEST, SIZES


@click.command()
@click.option("--size", type=click.Choice(sorted(SIZES)), default="default", show_default=True,
              help="'default' (a few minutes on 2 cores) or 'test' (seconds, for the test suite).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to save the model [default: <data_dir>/base-model].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of corpus, init and training.")
@click.option("--force", is_flag=True, help="Rebuild even if the directory already holds a model.")
def bootstrap(size: str, out: Path | None, seed: int, force: bool) -> None:
    """Train the demo base model (tokenizer + small Llama) unless a base model is configured."""
    from loopdesk.cli_support import settings_or_exit
    from sim.bootstrap import build_base_model

    settings = settings_or_exit()
    if settings.base_model and out is None:
        click.echo(f"LOOPDESK_BASE_MODEL is set ({settings.base_model}); nothing to bootstrap.")
        return
    out = out or settings.base_model_dir
    if out.exists() and any(out.iterdir()) and not force:
        if (out / MANIFEST).exists():
            click.echo(f"A base model is already built in {out}; use --force to rebuild it.")
            return
        raise click.ClickException(f"{out} is not empty and holds no loopdesk base model; "
                                   "pick another --out or pass --force to replace it.")
    click.echo(f"Building the {size} base model in {out} (seed {seed})...")
    path = build_base_model(out, size=size, seed=seed, progress=True)
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    click.echo(f"Done: {manifest['params']:,} parameters, {manifest['train_seconds']} s, "
               f"{manifest['eos_share']:.0%} of sampled replies end with EOS -> {path}")
