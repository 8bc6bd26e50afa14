"""What the room CLIs share: settings (and a round's config) from their sources, or a clear usage error.

It lives apart from ``loopdesk.cli`` (which imports every room's commands), so no room imports the
``loopdesk`` command itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import click

from loopdesk.config import Settings, SettingsError, load_settings, round_variables

round_config_option = click.option(
    "--round-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="JSON file of training-round fields (trainer.round_config.RoundConfig; sections such as ppo and gate "
         "as objects); LOOPDESK_ROUND_* variables and flags go over it.")


def settings_or_exit(**overrides: Any) -> Settings:
    """Settings from the environment, or a clear error and exit status 2."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def round_overrides_or_exit(file: Path | None = None, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """This process's overrides of the round defaults (``trainer.round_config.round_overrides``: the file,
    then the ``LOOPDESK_ROUND_*`` variables, then the flags), or a clear error and exit status 2."""
    from trainer.round_config import round_overrides

    try:
        return round_overrides(round_variables(), file, flags)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def round_config_or_exit(file: Path | None = None, flags: Mapping[str, Any] | None = None):
    """This process's own round config (``trainer.round_config.RoundConfig``), or a clear error and exit status 2."""
    from trainer.round_config import RoundConfig

    return RoundConfig.from_dict(round_overrides_or_exit(file, flags))
