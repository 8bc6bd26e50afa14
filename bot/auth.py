"""Console accounts in the browser: login and logout, signed session cookies, roles and CSRF.

The session is Flask's signed cookie (HttpOnly, SameSite=Lax) holding the user's name and a
per-session CSRF token. Every console blueprint calls ``guard(role)`` before each request:
no session → 401 JSON under /api (a redirect to the login page elsewhere), the wrong role →
403, a write (POST/PUT/PATCH/DELETE) without the session's token → 403. Forms send the token
as the hidden field ``csrf_token``, JSON writes as the header ``X-CSRF-Token``. An admin may
do what experts and operators do.

The JSON login takes no token (there is no session yet): it accepts only ``application/json``,
which a cross-site page cannot send with credentials, and the cookie is SameSite=Lax.
"""

from __future__ import annotations

import hmac
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, Response, g, jsonify, redirect, render_template, request, session,
                   url_for)
from flask_limiter import Limiter
from pydantic import Field
from werkzeug.exceptions import TooManyRequests

from bot.errors import ApiError, error_payload
from bot.schemas import Body
from bot.services import services
from bot.validation import parse_body
from feedback_store.errors import NotFoundError
from feedback_store.users import User
from loopdesk.config import Settings

bp = Blueprint("auth", __name__)

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_LIFETIME = timedelta(hours=12)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOME = {"expert": "expert.console", "operator": "operator.console", "admin": "operator.console"}
LOGIN_ENDPOINTS = ("auth.login_form", "auth.api_login")


class LoginIn(Body):
    """Body of the JSON login."""

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def secret_key(settings: Settings) -> str:
    """``settings.secret_key``, or the one kept in ``data_dir/secret_key`` (created 0600 on first use)."""
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text(encoding="utf-8").strip()


def init_app(app: Flask, settings: Settings) -> None:
    """Signed, HttpOnly, SameSite=Lax session cookies and the login/logout routes."""
    app.secret_key = secret_key(settings)
    app.config.update(SESSION_COOKIE_NAME="loopdesk_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)
    app.register_blueprint(bp)


def limit_logins(app: Flask, limiter: Limiter, settings: Settings) -> None:
    """Rate-limit sign-in attempts (form and JSON together) per client IP with the app's limiter."""
    shared = limiter.shared_limit(lambda: settings.rate_limit_login, scope="login", methods=["POST"],
                                  override_defaults=False)
    for endpoint in LOGIN_ENDPOINTS:
        app.view_functions[endpoint] = shared(app.view_functions[endpoint])


def may_act_as(user: User, role: str) -> bool:
    """Whether ``user`` may use the console of ``role``."""
    return user.role in (role, "admin")


def current_user() -> User | None:
    """The signed-in user (re-read from the store, so removed accounts lose access), or None."""
    if "user" not in g:
        name = session.get("user")
        try:
            g.user = services().store.users.get(name) if name else None
        except NotFoundError:
            g.user = None
    return g.user


def csrf_token() -> str:
    """The session's CSRF token, created on first use."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def _csrf_ok() -> bool:
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    expected = session.get(CSRF_FIELD, "")
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def _is_api() -> bool:
    return request.path.startswith("/api/")


def guard(role: str) -> Callable[[], Response | tuple[str, int] | None]:
    """A ``before_request`` hook admitting only signed-in users of ``role`` (or admins)."""

    def check() -> Response | tuple[str, int] | None:
        user = current_user()
        if user is None:
            if _is_api():
                raise ApiError(401, "login_required", "sign in first: POST /api/expert/login")
            return redirect(url_for("auth.login_form", next=request.full_path.rstrip("?")))
        if not may_act_as(user, role):
            message = f"{user.name} is {_article(user.role)} {user.role}; this needs the {role} role"
            if _is_api():
                raise ApiError(403, "wrong_role", message)
            return render_template("login.html", error=message, user=user, next_url=request.path), 403
        if request.method in UNSAFE_METHODS and not _csrf_ok():
            raise ApiError(403, "csrf_failed", f"missing or wrong CSRF token: send the header {CSRF_HEADER}")
        return None

    return check


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _sign_in(user: User) -> str:
    """Start a fresh session for ``user`` (a new CSRF token too); return the token."""
    session.clear()
    session.permanent = True
    session["user"] = user.name
    g.user = user
    return csrf_token()


def _safe_next(target: str | None, user: User) -> str:
    """Only same-site paths are followed after login."""
    parts = urlsplit(target or "")
    if target and target.startswith("/") and not target.startswith("//") and not parts.netloc:
        return target
    return url_for(HOME[user.role])


@bp.route("/login", methods=["GET", "POST"])
def login_form() -> Response | str | tuple[str, int]:
    """The sign-in page; its form carries the CSRF token of the (anonymous) session."""
    next_url = request.values.get("next", "")
    if request.method == "GET":
        return render_template("login.html", next_url=next_url, user=current_user())
    if not _csrf_ok():
        return render_template("login.html", next_url=next_url, error="The form expired; please try again."), 403
    user = services().store.users.authenticate(request.form.get("name", ""), request.form.get("password", ""))
    if user is None:
        return render_template("login.html", next_url=next_url, error="Wrong name or password."), 401
    _sign_in(user)
    return redirect(_safe_next(next_url, user))


@bp.post("/logout")
def logout_form() -> Response:
    """Sign out (form post with the CSRF token) and go back to the login page."""
    if not _csrf_ok():
        raise ApiError(403, "csrf_failed", "missing or wrong CSRF token")
    session.clear()
    return redirect(url_for("auth.login_form"))


@bp.post("/api/expert/login")
def api_login() -> Response:
    """JSON sign-in for any console role: sets the session cookie, returns the CSRF token and role."""
    body = parse_body(LoginIn)
    user = services().store.users.authenticate(body.name, body.password)
    if user is None:
        raise ApiError(401, "bad_credentials", "wrong name or password")
    return jsonify(csrf_token=_sign_in(user), role=user.role, name=user.name)


@bp.post("/api/expert/logout")
def api_logout() -> Response:
    """End the session (needs the CSRF token like every write)."""
    if current_user() is None:
        raise ApiError(401, "login_required", "not signed in")
    if not _csrf_ok():
        raise ApiError(403, "csrf_failed", f"missing or wrong CSRF token: send the header {CSRF_HEADER}")
    session.clear()
    return jsonify(signed_out=True)


@bp.app_context_processor
def _template_globals() -> dict[str, Callable[[], str]]:
    return {"csrf_token": csrf_token}


@bp.errorhandler(TooManyRequests)
def _too_many(exc: TooManyRequests) -> tuple[Response | str, int]:
    """Rate-limited logins: JSON for the API, the login page with a message for the form."""
    status, body = error_payload(exc)
    if _is_api():
        return jsonify(body), status
    return render_template("login.html", next_url=request.values.get("next", ""),
                           error="Too many sign-in attempts; wait a minute and try again."), status


SESSION_SCHEME = {"consoleSession": {
    "type": "apiKey", "in": "cookie", "name": "loopdesk_session",
    "description": "set by POST /api/expert/login; every write also sends its csrf_token as X-CSRF-Token"}}


def console_operation(summary: str, status: str = "200", body: type[Body] | None = None, write: bool = False,
                      description: str = "") -> dict:
    """An OpenAPI operation of the console API: session cookie, CSRF header on writes, JSON answers."""
    from bot.openapi import json_body, operation

    ok = {status: {"description": summary, "content": {"application/json": {"schema": {"type": "object"}}}}}
    errors = (401, 403, 404, 415, 422) if write else (401, 403, 404, 422)
    described = operation(summary, ok, *errors, body=json_body(body) if body else None,
                          security=[{"consoleSession": []}])
    notes = [description] if description else []
    if write:
        notes.append(f"Send the session's CSRF token in the {CSRF_HEADER} header.")
    if notes:
        described["description"] = " ".join(notes)
    return described


def openapi_section():
    """Sign-in and sign-out of the console JSON API."""
    from bot.openapi import Section, json_body, operation

    login = operation("Sign in (any console role): sets the session cookie, returns csrf_token and role",
                      {"200": {"description": "signed in",
                               "content": {"application/json": {"schema": {"type": "object"}}}}},
                      401, 415, 422, 429, body=json_body(LoginIn))
    return Section({"/api/expert/login": {"post": login},
                    "/api/expert/logout": {"post": console_operation("Sign out", write=True)}},
                   [LoginIn], SESSION_SCHEME)
