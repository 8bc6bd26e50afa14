"""Console sign-in and sign-out: the login page, the JSON login, and their limits.

Sign-in attempts are limited twice: per client IP (``LOOPDESK_RATE_LIMIT_LOGIN``, by the app's
limiter) and per account whatever the IP (``LOOPDESK_LOGIN_LOCKOUT_*``: too many failures lock
the account for a while, and while it is locked even the right password is refused with 429).
Signing out ends every session of the account (see ``bot.sessions``).

The JSON login takes no CSRF token (there is no session yet): it accepts only
``application/json``, which a cross-site page cannot send with credentials, and the cookie is
SameSite=Lax.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request, url_for
from flask_limiter import Limiter
from pydantic import Field
from werkzeug.exceptions import RequestEntityTooLarge, TooManyRequests

from bot.errors import ApiError, error_payload
from bot.schemas import Body
from bot.services import services
from bot.sessions import (SESSION_SCHEME, console_operation, csrf_ok, current_user, is_api, require_csrf, sign_in,
                          sign_out)
from bot.validation import parse_body
from feedback_store.errors import AccountDisabledError, AccountLockedError
from feedback_store.users import User
from loopdesk.config import Settings, SettingsError

bp = Blueprint("auth", __name__)

HOME = {"expert": "expert.console", "operator": "operator.console", "admin": "operator.console"}
LOGIN_ENDPOINTS = ("auth.login_form", "auth.api_login")


class LoginIn(Body):
    """Body of the JSON login."""

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def init_app(app: Flask, settings: Settings) -> None:
    """The login and logout routes (the account lockout's durations are checked first)."""
    if settings.login_lockout_failures > 0 and min(settings.login_lockout_window_s, settings.login_lockout_s) <= 0:
        raise SettingsError("LOOPDESK_LOGIN_LOCKOUT_WINDOW_S and LOOPDESK_LOGIN_LOCKOUT_S must be positive seconds "
                            "(LOOPDESK_LOGIN_LOCKOUT_FAILURES=0 turns the lockout off)")
    app.register_blueprint(bp)


def limit_logins(app: Flask, limiter: Limiter, settings: Settings) -> None:
    """Rate-limit sign-in attempts (form and JSON together) per client IP with the app's limiter."""
    shared = limiter.shared_limit(lambda: settings.rate_limit_login, scope="login", methods=["POST"],
                                  override_defaults=False)
    for endpoint in LOGIN_ENDPOINTS:
        app.view_functions[endpoint] = shared(app.view_functions[endpoint])


def _safe_next(target: str | None, user: User) -> str:
    """Where sign-in goes on: ``target`` if it is a path of this site (its fragment kept, e.g. the expert
    console's ``#c=<id>``), else the role's console. No scheme, no host, no ``//`` or backslash, no space
    or control character: browsers read ``/\\host`` and ``/<tab>/host`` as another site."""
    parts = urlsplit(target or "")
    if (target and target.startswith("/") and not target.startswith("//") and not parts.scheme
            and not parts.netloc and not any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in target)):
        return target
    return url_for(HOME[user.role])


def _login_page(status: int, error: str | None = None, next_url: str | None = None) -> tuple[str, int]:
    """The sign-in page; ``next_url`` defaults to the request's ``next`` (query or form)."""
    next_url = request.values.get("next", "") if next_url is None else next_url
    return render_template("login.html", next_url=next_url, error=error, user=current_user()), status


@bp.route("/login", methods=["GET", "POST"])
def login_form() -> Response | tuple[str, int] | tuple[str, int, dict[str, str]]:
    """The sign-in page; its form carries the CSRF token of the (anonymous) session."""
    if request.method == "GET":
        return _login_page(200)
    if not csrf_ok():
        return _login_page(403, "The form expired; please try again.")
    try:
        user = services().store.users.sign_in(request.form.get("name", ""), request.form.get("password", ""))
    except (AccountLockedError, AccountDisabledError) as exc:
        message = str(exc)
        page, status = _login_page(exc.http_status, f"{message[0].upper()}{message[1:]}.")
        locked = isinstance(exc, AccountLockedError)
        return page, status, {"Retry-After": str(exc.retry_after_s)} if locked else {}
    if user is None:
        return _login_page(401, "Wrong name or password.")
    sign_in(user)
    return redirect(_safe_next(request.form.get("next", ""), user))


@bp.post("/logout")
def logout_form() -> Response:
    """Sign out everywhere (form post with the CSRF token) and go back to the login page."""
    require_csrf()
    sign_out()
    return redirect(url_for("auth.login_form"))


@bp.post("/api/expert/login")
def api_login() -> Response:
    """JSON sign-in for any console role: sets the session cookie, returns the CSRF token and role."""
    body = parse_body(LoginIn)
    user = services().store.users.sign_in(body.name, body.password)
    if user is None:
        raise ApiError(401, "bad_credentials", "wrong name or password")
    return jsonify(csrf_token=sign_in(user), role=user.role, name=user.name)


@bp.post("/api/expert/logout")
def api_logout() -> Response:
    """End every session of the signed-in account (needs the CSRF token like every write)."""
    if current_user() is None:
        raise ApiError(401, "login_required", "not signed in")
    require_csrf()
    sign_out()
    return jsonify(signed_out=True)


@bp.errorhandler(TooManyRequests)
@bp.errorhandler(RequestEntityTooLarge)
def _refused(exc: TooManyRequests | RequestEntityTooLarge) -> tuple[Response | str, int]:
    """Rate-limited or oversized sign-ins: JSON for the API, the login page with a message for the form."""
    status, body = error_payload(exc)
    if is_api():
        return jsonify(body), status
    if isinstance(exc, RequestEntityTooLarge):  # the form cannot be read, so its next is not either
        return _login_page(status, "The form was too large to read; type a name and a password and try again.",
                           next_url=request.args.get("next", ""))
    return _login_page(status, "Too many sign-in attempts; wait a minute and try again.")


def openapi_section():
    """Sign-in and sign-out of the console JSON API."""
    from bot.openapi import Section, json_body, operation

    login = operation("Sign in (any console role): sets the session cookie, returns csrf_token and role",
                      {"200": {"description": "signed in",
                               "content": {"application/json": {"schema": {"type": "object"}}}}},
                      401, 403, 415, 422, 429, body=json_body(LoginIn))
    login["description"] = ("401: wrong name or password. 403: the account is disabled. 429: too many attempts "
                            "from this IP, or too many failed sign-ins for this account (it is locked for a "
                            "while, whatever the IP; Retry-After says how long).")
    logout = console_operation("Sign out: ends every session of the account, in every browser", write=True)
    return Section({"/api/expert/login": {"post": login}, "/api/expert/logout": {"post": logout}},
                   [LoginIn], SESSION_SCHEME)
