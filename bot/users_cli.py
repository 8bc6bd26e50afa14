"""``loopdesk users``: console accounts (experts, operators, admins)."""

from __future__ import annotations

import click

from feedback_store.users import ROLES


@click.group("users")
def users() -> None:
    """Manage console accounts."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="expert, operator, or admin (both)")
@click.password_option("--password", help="prompted (hidden, twice) when not given")
def add(name: str, role: str, password: str) -> None:
    """Create the account NAME with ROLE; the password is prompted and stored only as a hash."""
    from feedback_store import FeedbackStore, FeedbackStoreError
    from loopdesk.cli_support import settings_or_exit

    store = FeedbackStore.from_settings(settings_or_exit(), announce=False)
    try:
        user = store.users.add(name, role, password)
    except FeedbackStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {user.role} {user.name}")


@users.command("list")
def list_users() -> None:
    """Show every account and its role."""
    from feedback_store import FeedbackStore
    from loopdesk.cli_support import settings_or_exit

    store = FeedbackStore.from_settings(settings_or_exit(), announce=False)
    for user in store.users.list():
        click.echo(f"{user.name}\t{user.role}")
