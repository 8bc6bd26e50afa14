"""Console sessions: the signed cookie, its revocation, roles and CSRF.

The session is Flask's signed cookie (HttpOnly, SameSite=Lax, ``Secure`` with
``LOOPDESK_SECURE_COOKIES``) holding the user's name, the account's session generation when it
was issued, and a per-session CSRF token. Every console request re-reads the account: a removed
or disabled account, or a generation that has moved on (sign-out, a new password or role, see
``feedback_store.users``), ends the session. Signing out ends every session of that account, in
every browser.

Every console blueprint calls ``guard(role)`` before each request: no valid session → 401 JSON
under /api (a redirect to the login page elsewhere), the wrong role → 403, a write
(POST/PUT/PATCH/DELETE) without the session's token → 403. Forms send the token as the hidden
field ``csrf_token``, JSON writes as the header ``X-CSRF-Token``. An admin may do everything.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Callable

from flask import Flask, Response, g, redirect, render_template, request, session, url_for

from bot.errors import ApiError
from bot.schemas import Body
from bot.services import services
from feedback_store.errors import NotFoundError
from feedback_store.users import User
from loopdesk.config import Settings, kept_secret

COOKIE = "loopdesk_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_LIFETIME = timedelta(hours=12)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def secret_key(settings: Settings) -> str:
    """``settings.secret_key``, or the one kept in ``data_dir/secret_key`` (created 0600 on first use)."""
    return kept_secret(settings, "secret_key")


def init_app(app: Flask, settings: Settings) -> None:
    """Signed, HttpOnly, SameSite=Lax (and, when configured, Secure) session cookies."""
    app.secret_key = secret_key(settings)
    app.config.update(SESSION_COOKIE_NAME=COOKIE, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.secure_cookies, PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)
    app.context_processor(lambda: {"csrf_token": csrf_token})


def may_act_as(user: User, role: str) -> bool:
    """Whether ``user`` may use the console of ``role``."""
    return user.role in (role, "admin")


def current_user() -> User | None:
    """The signed-in user, or None once the account is gone, disabled or its sessions were ended."""
    if "user" not in g:
        g.user = _session_user()
    return g.user


def _session_user() -> User | None:
    name = session.get("user")
    if not name:
        return None
    try:
        user = services().store.users.get(name)
    except NotFoundError:
        user = None
    if user is None or user.disabled or user.session_generation != session.get("generation"):
        session.clear()
        return None
    return user


def sign_in(user: User) -> str:
    """Start a fresh session for ``user`` (a new CSRF token too); return the token."""
    session.clear()
    session.permanent = True
    session["user"] = user.name
    session["generation"] = user.session_generation
    g.user = user
    return csrf_token()


def renew_session(generation: int) -> None:
    """Keep this session (and its CSRF token) valid after its own account moved to ``generation``."""
    session["generation"] = generation


def sign_out() -> None:
    """End every session of the signed-in account, this one included."""
    user = current_user()
    if user is not None:
        try:
            services().store.users.end_sessions(user.name)
        except NotFoundError:
            pass  # removed meanwhile: its sessions are void already
    session.clear()
    g.user = None


def csrf_token() -> str:
    """The session's CSRF token, created on first use."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def csrf_ok() -> bool:
    """Whether the request carries this session's CSRF token (header or form field)."""
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    expected = session.get(CSRF_FIELD, "")
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def require_csrf() -> None:
    """Refuse the request with 403 unless it carries the session's CSRF token."""
    if not csrf_ok():
        raise ApiError(403, "csrf_failed", f"missing or wrong CSRF token: send the header {CSRF_HEADER}")


def is_api() -> bool:
    return request.path.startswith("/api/")


def guard(role: str) -> Callable[[], Response | tuple[str, int] | None]:
    """A ``before_request`` hook admitting only signed-in users of ``role`` (or admins)."""

    def check() -> Response | tuple[str, int] | None:
        had_session = "user" in session
        user = current_user()
        if user is None:
            if is_api():
                ended = "your session has ended (signed out, or the account changed); " if had_session else ""
                raise ApiError(401, "login_required", f"{ended}sign in first: POST /api/expert/login")
            return redirect(url_for("auth.login_form", next=request.full_path.rstrip("?")))
        if not may_act_as(user, role):
            message = f"{user.name} is {_article(user.role)} {user.role}; this needs the {role} role"
            if is_api():
                raise ApiError(403, "wrong_role", message)
            return render_template("login.html", error=message, user=user, next_url=request.path), 403
        if request.method in UNSAFE_METHODS:
            require_csrf()
        return None

    return check


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


SESSION_SCHEME = {"consoleSession": {
    "type": "apiKey", "in": "cookie", "name": COOKIE,
    "description": "set by POST /api/expert/login; every write also sends its csrf_token as X-CSRF-Token"}}


def console_operation(summary: str, status: str = "200", body: type[Body] | None = None, write: bool = False,
                      description: str = "", also: tuple[int, ...] = ()) -> dict:
    """An OpenAPI operation of the console API: session cookie, CSRF header on writes, JSON answers
    (``also``: error statuses beyond the usual ones, such as 409)."""
    from bot.openapi import json_body, operation

    ok = {status: {"description": summary, "content": {"application/json": {"schema": {"type": "object"}}}}}
    errors = ((401, 403, 404, 415, 422) if write else (401, 403, 404, 422)) + also
    described = operation(summary, ok, *errors, body=json_body(body) if body else None,
                          security=[{"consoleSession": []}])
    notes = [description] if description else []
    if write:
        notes.append(f"Send the session's CSRF token in the {CSRF_HEADER} header.")
    if notes:
        described["description"] = " ".join(notes)
    return described
