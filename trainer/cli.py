"""``loopdesk train`` (one round in the foreground), ``loopdesk worker`` (runs queued rounds) and
``loopdesk scheduler`` (enqueues rounds on cron schedules, applies the canary decision)."""

from __future__ import annotations

from typing import Any, Callable

import click

PASS_STATUSES = click.Choice(["canary", "active"])


def round_options(command: Callable) -> Callable:
    """Options shared by the commands that configure a round; each overrides a LOOPDESK_ setting."""
    options = [
        click.option("--gate-evaluator", default=None,
                     help="external evaluator command line, run with --candidate DIR --active VERSION "
                          "appended; prints a JSON verdict on its last line [setting gate_evaluator]"),
        click.option("--pass-status", "gate_pass_status", type=PASS_STATUSES, default=None,
                     help="what a candidate that passes the gate becomes [setting gate_pass_status]"),
        click.option("--rollout-steps", type=click.IntRange(0), default=None,
                     help="PPO steps on fresh rollouts per round [setting rollout_steps]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("train")
@round_options
def train(**options: Any) -> None:
    """Run one training round now, in the foreground, with a progress bar."""
    from feedback_store import FeedbackStore
    from loopdesk.cli import settings_or_exit
    from trainer.config import RoundConfig
    from feedback_store.errors import LockHeldError
    from trainer.round import NotEnoughFeedback, run_round

    settings = settings_or_exit(**options)
    store = FeedbackStore.from_settings(settings)
    try:
        run = run_round(settings, store, config=RoundConfig.for_settings(settings), trigger="cli")
    except (LockHeldError, NotEnoughFeedback) as exc:
        raise click.ClickException(str(exc)) from None
    metrics = run.metrics
    click.echo(f"run {run.id}: {run.status}; adapter {run.adapter_version}; "
               f"reward-model held-out accuracy {metrics.get('rm_eval_accuracy')}; "
               f"gate {'passed' if metrics.get('gate_passed') else 'failed: ' + '; '.join(metrics.get('gate_reasons', []))}")


@click.command("worker")
@click.option("--burst", is_flag=True, help="exit once the queue is empty")
def worker(burst: bool) -> None:
    """Run queued training rounds (an RQ worker on the training queue)."""
    from feedback_store import FeedbackStore
    from loopdesk.cli import settings_or_exit
    from trainer.worker import work

    store = FeedbackStore.from_settings(settings_or_exit())
    click.echo(f"loopdesk: training worker on queue {store.training.queue.name}")
    work(store, burst=burst)


@click.command("scheduler")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="seconds between checks of the schedules and the canary")
@click.option("--once", is_flag=True, help="check once and exit")
@round_options
def scheduler(interval: float, once: bool, **options: Any) -> None:
    """Enqueue a training round whenever a cron schedule is due; promote or roll back the canary."""
    from feedback_store import FeedbackStore
    from loopdesk.cli import settings_or_exit
    from trainer.config import RoundConfig
    from trainer.scheduler import loop

    settings = settings_or_exit(**options)
    store = FeedbackStore.from_settings(settings)
    config = RoundConfig.for_settings(settings)
    click.echo(f"loopdesk: scheduler checking every {interval:g} s")
    loop(store, config.gate, interval, round_config=config.to_dict(), echo=click.echo, once=once)
