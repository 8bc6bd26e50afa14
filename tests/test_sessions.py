"""Console sessions can be revoked: a copied cookie stops working once its account signs out, is
disabled, changes password or role, or is removed; sign-ins lock per account across IPs; the cookie
is Secure when configured."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bot.app import create_app
from feedback_store import FeedbackStore
from loopdesk.config import SettingsError
from tests.console_helpers import PASSWORD, add_accounts, login_form_token, sign_in
from tests.web_helpers import GENEROUS_LIMIT, running_engine, web_settings

QUEUE = "/api/expert/queue"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, engine): the model loads once for the module; each test builds its own app and accounts."""
    settings = web_settings(data_dir, base_model_dir, rate_limit_login=GENEROUS_LIMIT)
    with running_engine(settings, FeedbackStore.from_settings(settings, announce=False)) as engine:
        yield settings, engine


def fresh_app(web, **changes) -> tuple[Flask, FeedbackStore]:
    """An app on a key prefix of its own, with the four console accounts."""
    settings, engine = web
    settings = settings.replace(key_prefix=f"s{uuid.uuid4().hex[:12]}", **changes)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    return create_app(settings, engine, store), store


def copy_of(app: Flask, client: FlaskClient) -> FlaskClient:
    """Another client holding the same session cookie, as a thief who copied it would."""
    thief = app.test_client()
    thief.set_cookie("loopdesk_session", client.get_cookie("loopdesk_session").value)
    return thief


def test_a_copied_cookie_stops_working_after_logout_in_every_browser(web):
    app, _ = fresh_app(web)
    owner, other_browser = app.test_client(), app.test_client()
    token = sign_in(owner, "erin")
    sign_in(other_browser, "erin")
    thief = copy_of(app, owner)
    assert thief.get(QUEUE).status_code == 200
    assert owner.post("/api/expert/logout", headers={"X-CSRF-Token": token}).status_code == 200
    for client in (thief, other_browser, owner):
        response = client.get(QUEUE)
        assert response.status_code == 401 and response.json["error"]["code"] == "login_required"
    sign_in(owner, "erin")
    assert owner.get(QUEUE).status_code == 200 and thief.get(QUEUE).status_code == 401


def test_a_revoked_session_is_told_it_ended_and_its_cookie_is_dropped(web):
    app, store = fresh_app(web)
    client = app.test_client()
    sign_in(client, "erin")
    store.users.end_sessions("erin")
    response = client.get(QUEUE)
    assert response.status_code == 401
    assert response.json["error"]["message"].startswith("your session has ended")
    assert client.get_cookie("loopdesk_session") is None
    page = client.get("/expert")
    assert page.status_code == 302 and page.location.startswith("/login?next=")


def test_the_logout_form_ends_the_session_everywhere(web):
    app, _ = fresh_app(web)
    client = app.test_client()
    token = sign_in(client, "otto")
    thief = copy_of(app, client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert thief.get("/api/operator/runs").status_code == 401


CHANGES: dict[str, Callable[[FeedbackStore], object]] = {
    "disable": lambda s: s.users.disable("erin"),
    "passwd": lambda s: s.users.set_password("erin", "a brand new secret"),
    "role": lambda s: s.users.set_role("erin", "operator"),
    "remove": lambda s: s.users.remove("erin"),
    "sign-out": lambda s: s.users.end_sessions("erin"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_copied_cookie_stops_working_after_the_account_changes(web, change):
    app, store = fresh_app(web)
    owner = app.test_client()
    sign_in(owner, "erin")
    thief = copy_of(app, owner)
    assert thief.get(QUEUE).status_code == 200
    CHANGES[change](store)
    assert thief.get(QUEUE).status_code == 401
    assert owner.get(QUEUE).status_code == 401


def test_a_disabled_account_cannot_sign_in_until_enabled_and_old_cookies_stay_dead(web):
    app, store = fresh_app(web)
    owner = app.test_client()
    sign_in(owner, "erin")
    thief = copy_of(app, owner)
    store.users.disable("erin")
    response = app.test_client().post("/api/expert/login", json={"name": "erin", "password": PASSWORD})
    assert response.status_code == 403 and response.json["error"]["code"] == "account_disabled"
    assert "disabled" in response.json["error"]["message"]
    wrong = app.test_client().post("/api/expert/login", json={"name": "erin", "password": "not it at all"})
    assert wrong.status_code == 401 and wrong.json["error"]["code"] == "bad_credentials"
    store.users.enable("erin")
    assert thief.get(QUEUE).status_code == 401
    sign_in(owner, "erin")
    assert owner.get(QUEUE).status_code == 200


def test_a_recreated_account_does_not_revive_a_cookie_of_the_removed_one(web):
    app, store = fresh_app(web)
    store.users.add("temp", "operator", PASSWORD)
    client = app.test_client()
    assert client.post("/api/expert/login", json={"name": "temp", "password": PASSWORD}).status_code == 200
    thief = copy_of(app, client)
    store.users.remove("temp")
    store.users.add("temp", "admin", PASSWORD)
    assert thief.get("/api/operator/runs").status_code == 401
    assert thief.get("/api/admin/users").status_code == 401


def login_from(client: FlaskClient, ip: str, name: str, password: str):
    return client.post("/api/expert/login", json={"name": name, "password": password},
                       environ_base={"REMOTE_ADDR": ip})


def test_failed_sign_ins_lock_the_account_whatever_the_ip_until_the_lock_expires(web):
    app, _ = fresh_app(web, login_lockout_failures=3, login_lockout_window_s=60, login_lockout_s=2)
    client = app.test_client()
    answers = [login_from(client, f"198.51.100.{i}", "erin", "guess number one") for i in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 429]
    locked = answers[-1]
    assert locked.json["error"]["code"] == "account_locked"
    assert locked.json["error"]["message"] == ("too many failed sign-ins for erin: the account is locked; "
                                               "try again in 2 s")
    right_password = login_from(client, "203.0.113.9", "erin", PASSWORD)
    assert right_password.status_code == 429 and right_password.json["error"]["code"] == "account_locked"
    assert login_from(client, "198.51.100.0", "otto", PASSWORD).status_code == 200
    page = client.post("/login", data={"name": "erin", "password": PASSWORD, "csrf_token": login_form_token(client)})
    assert page.status_code == 429 and "Too many failed sign-ins for erin" in page.get_data(as_text=True)
    time.sleep(2.1)
    assert login_from(client, "203.0.113.9", "erin", PASSWORD).status_code == 200


def test_a_successful_sign_in_resets_the_failure_count(web):
    app, _ = fresh_app(web, login_lockout_failures=3)
    client = app.test_client()
    for _ in range(2):
        assert login_from(client, "198.51.100.1", "erin", "wrong password").status_code == 401
    assert login_from(client, "198.51.100.2", "erin", PASSWORD).status_code == 200
    for _ in range(2):
        assert login_from(client, "198.51.100.3", "erin", "wrong password").status_code == 401
    assert login_from(client, "198.51.100.4", "erin", PASSWORD).status_code == 200


def test_unknown_names_answer_like_known_ones_and_store_nothing_when_malformed(web):
    app, store = fresh_app(web, login_lockout_failures=2)
    client = app.test_client()
    answers = [login_from(client, "198.51.100.5", "nobody", "whatever it is") for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 429, 429]
    assert 899 <= int(answers[-1].headers["Retry-After"]) <= 900, "the default lock lasts 15 minutes"
    before = set(store.redis.scan_iter(f"{store.keys.prefix}:login:*"))
    assert login_from(client, "198.51.100.5", "no:such user*", "whatever").status_code == 401
    assert set(store.redis.scan_iter(f"{store.keys.prefix}:login:*")) == before


def test_a_lockout_without_positive_durations_is_refused_at_start(web):
    with pytest.raises(SettingsError, match="LOOPDESK_LOGIN_LOCKOUT_WINDOW_S and LOOPDESK_LOGIN_LOCKOUT_S must be"):
        fresh_app(web, login_lockout_s=0)
    app, _ = fresh_app(web, login_lockout_failures=0, login_lockout_s=0)
    client = app.test_client()
    assert [login_from(client, "198.51.100.6", "erin", "wrong password").status_code for _ in range(12)] == [401] * 12


def test_session_cookie_is_secure_only_when_configured(web):
    for secure in (False, True):
        app, _ = fresh_app(web, secure_cookies=secure)
        response = app.test_client().post("/api/expert/login", json={"name": "erin", "password": PASSWORD})
        attributes = [part.strip() for part in response.headers["Set-Cookie"].split(";")]
        assert ("Secure" in attributes) is secure, attributes
        assert "HttpOnly" in attributes and "SameSite=Lax" in attributes
