"""``loopdesk data …``: customers' data: prune what the retention period has passed, erase one
conversation, export everything stored about one."""

from __future__ import annotations

import json

import click

CONVERSATION = click.option("--conversation", "conv_id", required=True, metavar="ID", help="the conversation's id")


@click.group("data")
def data_group() -> None:
    """Customers' data: retention, erasure and export (see docs/architecture.md#retention-erasure-and-pii)."""


@data_group.command("prune")
@click.option("--dry-run", is_flag=True, help="count what would be pruned and held; change nothing")
def prune(dry_run: bool) -> None:
    """Prune the conversations that started more than LOOPDESK_RETENTION_DAYS ago, one transaction each
    (interrupting it leaves every conversation whole or gone); those whose feedback the next training
    round has not consumed wait for it."""
    from tqdm import tqdm

    from feedback_store.store import FeedbackStore
    from loopdesk.cli_support import settings_or_exit

    settings = settings_or_exit()
    if settings.retention_days <= 0:
        click.echo("retention is off (LOOPDESK_RETENTION_DAYS=0): every conversation is kept")
        return
    store = FeedbackStore.from_settings(settings)
    with tqdm(total=store.retention.expired(), unit="conversation", desc="dry run" if dry_run else "prune") as bar:
        report = store.retention.prune(dry_run=dry_run, on_progress=lambda: bar.update(1))
    click.echo(report.summary())


@data_group.command("erase")
@CONVERSATION
def erase(conv_id: str) -> None:
    """Erase a conversation (or the numbers its pruning kept) from every key and index, as its customer's
    DELETE /api/conversations/ID does; the record that it was erased names the training runs that may
    have used it."""
    from feedback_store.errors import NotFoundError, ValidationFailed
    from feedback_store.store import FeedbackStore
    from loopdesk.cli_support import settings_or_exit

    store = FeedbackStore.from_settings(settings_or_exit())
    try:
        record = store.erasure.erase(conv_id)
    except (NotFoundError, ValidationFailed) as exc:
        raise click.ClickException(str(exc)) from None
    used = (f"training runs that may have used its feedback: {', '.join(record.used_by_runs)} "
            f"(adapters {', '.join(record.adapters) or 'none'})" if record.used_by_runs
            else "no training run used its feedback")
    click.echo(f"conversation {conv_id} erased ({record.was}, by {record.by}); {used}")


@data_group.command("export")
@CONVERSATION
def export(conv_id: str) -> None:
    """Print everything stored about a conversation as JSON: record, turns (prompts, token ids and
    log-probs included), rating history, annotations, its place in every index, and what pruning or
    erasure left of it."""
    from feedback_store.errors import NotFoundError, ValidationFailed
    from feedback_store.store import FeedbackStore
    from loopdesk.cli_support import settings_or_exit

    store = FeedbackStore.from_settings(settings_or_exit(), announce=False)
    try:
        click.echo(json.dumps(store.erasure.export(conv_id), indent=2, ensure_ascii=False))
    except (NotFoundError, ValidationFailed) as exc:
        raise click.ClickException(str(exc)) from None
