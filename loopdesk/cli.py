"""The ``loopdesk`` command. Each area keeps its commands in its own ``cli`` module;
those modules import heavy libraries inside the commands, so ``--help`` stays fast."""

from __future__ import annotations

import importlib
import sys

import click

from loopdesk.config import SettingsError, load_settings

# (module, command attribute): every area's commands, in the order --help lists them.
COMMANDS = [
    ("feedback_store.cli", "redis_group"),
    ("feedback_store.knowledge_cli", "kb_group"),
    ("bot.cli", "serve"),
    ("bot.users_cli", "users"),
    ("trainer.cli", "train"),
    ("trainer.cli", "worker"),
    ("trainer.cli", "scheduler"),
    ("sim.cli", "bootstrap"),
    ("sim.simulate_cli", "simulate"),
    ("sim.loop_cli", "loop"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loopdesk")
def main() -> None:
    """loopdesk: a customer-service chatbot that learns from its customers' ratings."""


def settings_or_exit(**overrides):
    """Settings from the environment, or a clear error and exit status 2."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@main.command("settings")
def settings_command() -> None:
    """Print every setting (environment variable, default, meaning) as a Markdown table."""
    from loopdesk.config import settings_table

    click.echo(settings_table())


for module_name, attribute in COMMANDS:
    main.add_command(getattr(importlib.import_module(module_name), attribute))

if __name__ == "__main__":
    sys.exit(main())
