"""The ``loopdesk`` command. Each area keeps its commands in its own ``cli`` module;
those modules import heavy libraries inside the commands, so ``--help`` stays fast."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from loopdesk.cli_support import round_config_option, round_config_or_exit, settings_or_exit

# (module, command attribute): every area's commands, in the order --help lists them.
COMMANDS = [
    ("feedback_store.cli", "redis_group"),
    ("feedback_store.knowledge_cli", "kb_group"),
    ("feedback_store.data_cli", "data_group"),
    ("bot.cli", "serve"),
    ("bot.users_cli", "users"),
    ("trainer.cli", "train"),
    ("trainer.cli", "worker"),
    ("trainer.cli", "scheduler"),
    ("sim.cli", "bootstrap"),
    ("harness.simulate_cli", "simulate"),
    ("harness.loop_cli", "loop"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loopdesk")
def main() -> None:
    """loopdesk: a customer-service chatbot that learns from its customers' ratings."""


@main.command("settings")
@click.option("--defaults", is_flag=True, help="Only defaults and meanings: the README's table.")
@click.option("--round", "round_", is_flag=True,
              help="The effective training-round config instead (LOOPDESK_ROUND_* variables applied).")
@round_config_option
def settings_command(defaults: bool, round_: bool, round_config: Path | None) -> None:
    """Print every setting as a Markdown table: environment variable, effective value (this
    environment's, secrets masked), default and meaning; with --round (or --round-config), every
    training-round field the same way."""
    from loopdesk.settings_docs import effective_settings_table, settings_table

    if defaults:
        if round_ or round_config:
            raise click.UsageError("--defaults prints the settings table; the round table has a default column")
        click.echo(settings_table())
        return
    settings = settings_or_exit()
    if round_ or round_config:
        from trainer.round_config import round_table

        config = round_config_or_exit(round_config).serving(settings.temperature, settings.max_reply_tokens)
        click.echo(round_table(config))
        return
    click.echo(effective_settings_table(settings))


for module_name, attribute in COMMANDS:
    main.add_command(getattr(importlib.import_module(module_name), attribute))

if __name__ == "__main__":
    sys.exit(main())
