"""``loopdesk users``: console accounts (experts, agents, operators, admins).

Every change to an account ends its signed-in sessions. The last enabled admin cannot be
disabled, removed or demoted: make another account admin first.
"""

from __future__ import annotations

from typing import Callable

import click

from feedback_store.users import ROLES


@click.group("users")
def users() -> None:
    """Manage console accounts."""


def _change(action: Callable[..., object], *args: str) -> None:
    """Run a store operation; its refusal (unknown user, last admin, short password) exits 1 with the reason."""
    from feedback_store import FeedbackStoreError

    try:
        action(*args)
    except FeedbackStoreError as exc:
        raise click.ClickException(str(exc)) from None


def _users():
    from feedback_store import FeedbackStore
    from loopdesk.cli_support import settings_or_exit

    return FeedbackStore.from_settings(settings_or_exit(), announce=False).users


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="expert, agent (answers handed-off chats in the inbox), operator, or admin (all of them)")
@click.option("--display-name", default="", help="the name customers see on an agent's replies (default: NAME)")
@click.password_option("--password", help="prompted (hidden, twice) when not given")
def add(name: str, role: str, display_name: str, password: str) -> None:
    """Create the account NAME with ROLE; the password is prompted and stored only as a hash."""
    _change(_users().add, name, role, password, display_name)
    click.echo(f"added {role} {name}")


@users.command("list")
def list_users() -> None:
    """Show every account, its role, and whether it is disabled."""
    for user in _users().list():
        click.echo(f"{user.name}\t{user.role}" + ("\tdisabled" if user.disabled else ""))


@users.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Refuse NAME's sign-ins and end its sessions (until ``enable``)."""
    _change(_users().disable, name)
    click.echo(f"disabled {name}; its sessions have ended")


@users.command("enable")
@click.argument("name")
def enable(name: str) -> None:
    """Let the disabled account NAME sign in again."""
    _change(_users().enable, name)
    click.echo(f"enabled {name}")


@users.command("remove")
@click.argument("name")
@click.confirmation_option(prompt="Remove the account for good?")
def remove(name: str) -> None:
    """Delete the account NAME and end its sessions."""
    _change(_users().remove, name)
    click.echo(f"removed {name}")


@users.command("passwd")
@click.argument("name")
@click.password_option("--password", help="prompted (hidden, twice) when not given")
def passwd(name: str, password: str) -> None:
    """Set NAME's password (prompted); every session of the account ends."""
    _change(_users().set_password, name, password)
    click.echo(f"password of {name} changed; its sessions have ended")


@users.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
def role(name: str, role: str) -> None:
    """Give NAME the ROLE (expert, agent, operator or admin); its sessions end."""
    _change(_users().set_role, name, role)
    click.echo(f"{name} is now {'an' if role[0] in 'aeiou' else 'a'} {role}; its sessions have ended")


@users.command("sign-out")
@click.argument("name")
def sign_out(name: str) -> None:
    """End every session of NAME, in every browser."""
    _change(_users().end_sessions, name)
    click.echo(f"ended every session of {name}")
