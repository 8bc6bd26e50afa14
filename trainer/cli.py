"""``loopdesk train`` (one round in the foreground), ``loopdesk worker`` (runs queued rounds) and
``loopdesk scheduler`` (enqueues rounds on cron schedules, applies the canary decision).

Each builds its own round config from the defaults, ``--round-config FILE``, the ``LOOPDESK_ROUND_*``
variables and the flags below, in that order (``trainer.round_config``). The gate is the training
process's own (``train``, ``worker``): a queued run records only how a round trains, so the scheduler
records the trainable part of its overrides (``recordable_overrides``) and has no gate flags; its gate
section decides only its canary check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from loopdesk.cli_support import round_config_option

PASS_STATUSES = click.Choice(["canary", "active"])


def round_options(command: Callable) -> Callable:
    """The round-config options of the commands that run or queue rounds; the flags go over the file and
    the ``LOOPDESK_ROUND_*`` variables."""
    options = [
        round_config_option,
        click.option("--rollout-steps", type=click.IntRange(0), default=None,
                     help="PPO steps on fresh rollouts per round [LOOPDESK_ROUND_ROLLOUT_STEPS]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def gate_options(command: Callable) -> Callable:
    """The gate flags of the commands that train (``train``, ``worker``): the gate is the trainer's own."""
    options = [
        click.option("--gate-evaluator", default=None,
                     help="external evaluator command line, run with --candidate DIR --active VERSION "
                          "appended; prints a JSON verdict on its last line [LOOPDESK_ROUND_GATE__EVALUATOR]"),
        click.option("--pass-status", type=PASS_STATUSES, default=None,
                     help="what a candidate that passes the gate becomes [LOOPDESK_ROUND_GATE__PASS_STATUS]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def round_flags(rollout_steps: int | None, gate_evaluator: str | None = None,
                pass_status: str | None = None) -> dict[str, Any]:
    """The round fields the flags given set, nested as ``RoundConfig.from_dict`` takes them."""
    gate = {k: v for k, v in {"evaluator": gate_evaluator, "pass_status": pass_status}.items() if v is not None}
    flags: dict[str, Any] = {"gate": gate} if gate else {}
    if rollout_steps is not None:
        flags["rollout_steps"] = rollout_steps
    return flags


def launched_team():
    """This process's team (``trainer.team``), or a usage error when the launch formed none."""
    from trainer.team import LaunchError, Team

    try:
        return Team.launched()
    except LaunchError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("train")
@round_options
@gate_options
def train(round_config: Path | None, **flags: Any) -> None:
    """Run one training round now, in the foreground, with a progress bar.

    Under ``accelerate launch --num_processes N`` the main process runs the round with this command's
    settings and round config; the others train with it on what it sends them (``trainer.team``)."""
    team = launched_team()
    if not team.is_main:
        from trainer.round_update import follow_round

        trained = follow_round(team)
        click.echo(f"loopdesk: process {team.index} of {team.size} "
                   + ("trained its share of the round" if trained else "stopped: the main process trained nothing"),
                   err=True)
        return
    with team.leading():  # the other processes wait for what it sends them, or for word to stop
        run_in_foreground(team, round_config, flags)


def run_in_foreground(team, round_config: Path | None, flags: dict[str, Any]) -> None:
    """``loopdesk train``'s round, in the main (or only) process."""
    from feedback_store import FeedbackStore
    from feedback_store.errors import LockHeldError
    from loopdesk.cli_support import round_config_or_exit, settings_or_exit
    from trainer.round import NotEnoughFeedback, run_round

    settings = settings_or_exit()
    config = round_config_or_exit(round_config, round_flags(**flags))
    store = FeedbackStore.from_settings(settings)
    try:
        run = run_round(settings, store, config=config, trigger="cli", team=team)
    except (LockHeldError, NotEnoughFeedback) as exc:
        raise click.ClickException(str(exc)) from None
    metrics = run.metrics
    click.echo(f"run {run.id}: {run.status}; adapter {run.adapter_version}; "
               f"reward-model held-out accuracy {metrics.get('rm_eval_accuracy')}; "
               f"gate {'passed' if metrics.get('gate_passed') else 'failed: ' + '; '.join(metrics.get('gate_reasons', []))}")


@click.command("worker")
@click.option("--burst", is_flag=True, help="exit once the queue is empty")
@round_options
@gate_options
def worker(burst: bool, round_config: Path | None, **flags: Any) -> None:
    """Run queued training rounds (an RQ worker on the training queue) with this worker's round config;
    what a queued run recorded goes over it, except the gate, which is this worker's alone."""
    from feedback_store import FeedbackStore
    from loopdesk.cli_support import round_config_or_exit, settings_or_exit
    from trainer.worker import work

    if launched_team().size > 1:
        raise click.UsageError("loopdesk worker runs queued rounds one process at a time; a round on several "
                               "processes is `accelerate launch --num_processes N -m loopdesk train`")
    settings = settings_or_exit()
    config = round_config_or_exit(round_config, round_flags(**flags))
    store = FeedbackStore.from_settings(settings)
    click.echo(f"loopdesk: training worker on queue {store.training.queue.name}")
    work(store, settings, config, burst=burst)


@click.command("scheduler")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="seconds between checks of the schedules and the canary")
@click.option("--once", is_flag=True, help="check once and exit")
@round_options
def scheduler(interval: float, once: bool, round_config: Path | None, **flags: Any) -> None:
    """Enqueue a training round whenever a cron schedule is due (recording how this scheduler's round
    overrides train, never their gate); promote or roll back the canary by this scheduler's gate section;
    every hour, prune the conversations past LOOPDESK_RETENTION_DAYS (as `loopdesk data prune` does)."""
    from feedback_store import FeedbackStore
    from loopdesk.cli_support import round_overrides_or_exit, settings_or_exit
    from trainer.round_config import RoundConfig, recordable_overrides
    from trainer.scheduler import loop

    settings = settings_or_exit()
    overrides = round_overrides_or_exit(round_config, round_flags(**flags))
    store = FeedbackStore.from_settings(settings)
    click.echo(f"loopdesk: scheduler checking every {interval:g} s")
    loop(store, RoundConfig.from_dict(overrides).gate, interval, round_config=recordable_overrides(overrides),
         echo=click.echo, once=once)
