"""The Users page: admins add accounts, change roles and passwords, disable, enable, remove, and
sign accounts out everywhere.

``/admin/users`` is the page; ``/api/admin/users...`` is its JSON API. Every route needs a
signed-in admin; writes need the session's CSRF token. Each change ends the account's sessions
(``feedback_store.users``); an admin who changes their own password stays signed in here. The
last enabled admin cannot be disabled, removed or demoted (409).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template
from pydantic import Field

from bot.schemas import Body
from bot.services import services
from bot.sessions import console_operation, current_user, guard, renew_session
from bot.validation import parse_body
from feedback_store.users import ROLES, Role, User

bp = Blueprint("admin", __name__)
bp.before_request(guard("admin"))

API = "/api/admin/users"


class NewUserIn(Body):
    name: str = Field(min_length=1, max_length=64, description="letters, digits, _ and -")
    role: Role
    password: str = Field(min_length=1, max_length=1024, description="at least 8 characters")
    display_name: str = Field(default="", max_length=64, description="the name customers see on an agent's replies")


class RoleIn(Body):
    role: Role


class DisabledIn(Body):
    disabled: bool = Field(description="true: the account cannot sign in and its sessions end")


class PasswordIn(Body):
    password: str = Field(min_length=1, max_length=1024, description="at least 8 characters")


def _user(user: User) -> dict[str, Any]:
    return user.model_dump(exclude={"session_generation"})


def _changed(name: str, generation: int, keep_own_session: bool = False) -> Response:
    """The account after a change; the acting admin's own session survives only where asked."""
    if keep_own_session and name == current_user().name:
        renew_session(generation)
    return jsonify(_user(services().store.users.get(name)))


@bp.get("/admin/users")
def console() -> str:
    """The Users page (its table and forms are driven by console.users.js)."""
    return render_template("users_console.html", user=current_user(), roles=ROLES)


@bp.get(API)
def users() -> Response:
    """Every account with its role and whether it is disabled."""
    return jsonify(users=[_user(u) for u in services().store.users.list()])


@bp.post(API)
def add_user() -> tuple[Response, int]:
    """Create an account; 409 if the name is taken, 422 for a bad name or a short password."""
    body = parse_body(NewUserIn)
    return jsonify(_user(services().store.users.add(body.name, body.role, body.password, body.display_name))), 201


@bp.put(f"{API}/<name>/role")
def set_role(name: str) -> Response:
    body = parse_body(RoleIn)
    return _changed(name, services().store.users.set_role(name, body.role))


@bp.put(f"{API}/<name>/disabled")
def set_disabled(name: str) -> Response:
    body = parse_body(DisabledIn)
    store = services().store
    return _changed(name, store.users.disable(name) if body.disabled else store.users.enable(name))


@bp.put(f"{API}/<name>/password")
def set_password(name: str) -> Response:
    body = parse_body(PasswordIn)
    return _changed(name, services().store.users.set_password(name, body.password), keep_own_session=True)


@bp.post(f"{API}/<name>/sign-out")
def sign_out_everywhere(name: str) -> Response:
    return _changed(name, services().store.users.end_sessions(name))


@bp.delete(f"{API}/<name>")
def remove_user(name: str) -> Response:
    services().store.users.remove(name)
    return jsonify(removed=name)


def openapi_section():
    """The Users API's part of /openapi.json."""
    from bot.openapi import Section

    op = console_operation
    ends = "Ends every session of the account."
    return Section({
        API: {"get": op("Console accounts with their roles and whether each is disabled (admins only)"),
              "post": op("Add a console account", "201", body=NewUserIn, write=True, also=(409,))},
        f"{API}/{{name}}/role": {"put": op("Change an account's role", body=RoleIn, write=True, also=(409,),
                                           description=f"{ends} The last enabled admin cannot be demoted.")},
        f"{API}/{{name}}/disabled": {"put": op("Disable or enable an account", body=DisabledIn, write=True,
                                               also=(409,),
                                               description=f"{ends} The last enabled admin cannot be disabled.")},
        f"{API}/{{name}}/password": {"put": op("Set an account's password", body=PasswordIn, write=True,
                                               description=f"{ends} An admin's own session here stays valid.")},
        f"{API}/{{name}}/sign-out": {"post": op("Sign an account out everywhere", write=True)},
        f"{API}/{{name}}": {"delete": op("Remove an account", write=True, also=(409,),
                                         description=f"{ends} The last enabled admin cannot be removed.")},
    }, [NewUserIn, RoleIn, DisabledIn, PasswordIn])
