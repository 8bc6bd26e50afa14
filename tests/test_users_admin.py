"""Admins manage console accounts on the Users page and with ``loopdesk users``: roles, passwords,
disabling, removal, signing out everywhere; the last enabled admin always remains. (Which role
reaches which route, with CSRF, is checked for every route in tests/test_consoles.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from bot.app import create_app
from feedback_store import FeedbackStore
from feedback_store.errors import ConflictError
from loopdesk.cli import main
from tests.console_helpers import PASSWORD, add_accounts, sign_in
from tests.web_helpers import GENEROUS_LIMIT, running_engine, web_settings

USERS = "/api/admin/users"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    settings = web_settings(data_dir, base_model_dir, rate_limit_login=GENEROUS_LIMIT)
    with running_engine(settings, FeedbackStore.from_settings(settings, announce=False)) as engine:
        yield settings, engine


@pytest.fixture
def site(web) -> tuple[Flask, FeedbackStore]:
    """An app on a key prefix of this test's own, with erin, emil (experts), otto (operator), ada (admin)."""
    settings, engine = web
    settings = settings.replace(key_prefix=f"a{uuid.uuid4().hex[:12]}")
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    return create_app(settings, engine, store), store


def admin_client(app: Flask) -> tuple[FlaskClient, dict[str, str]]:
    client = app.test_client()
    return client, {"X-CSRF-Token": sign_in(client, "ada")}


def test_users_page_lists_accounts_for_admins_and_links_from_their_consoles(site):
    app, _ = site
    client, _ = admin_client(app)
    page = client.get("/admin/users").get_data(as_text=True)
    assert 'id="users"' in page and "console.users.js" in page and "Sign out everywhere" in page
    assert 'href="/admin/users"' in client.get("/operator").get_data(as_text=True)
    assert 'href="/admin/users"' in client.get("/expert").get_data(as_text=True)
    operator = app.test_client()
    sign_in(operator, "otto")
    assert 'href="/admin/users"' not in operator.get("/operator").get_data(as_text=True)
    refused = operator.get("/admin/users")
    assert refused.status_code == 403
    assert "otto is an operator; this needs the admin role" in refused.get_data(as_text=True)
    listed = {u["name"]: u for u in client.get(USERS).json["users"]}
    assert {n: (u["role"], u["disabled"]) for n, u in listed.items()} == {
        "ada": ("admin", False), "emil": ("expert", False), "erin": ("expert", False), "otto": ("operator", False),
        "abe": ("agent", False), "ben": ("agent", False)}
    assert (listed["abe"]["display_name"], listed["otto"]["display_name"]) == ("Abe from Northwind", "")
    assert "session_generation" not in listed["ada"] and "password_hash" not in listed["ada"]


def test_admin_adds_changes_and_removes_an_account_through_the_api(site):
    app, store = site
    client, csrf = admin_client(app)
    created = client.post(USERS, json={"name": "nora", "role": "expert", "password": "nine chars"}, headers=csrf)
    assert created.status_code == 201 and created.json["role"] == "expert"
    nora = app.test_client()
    assert nora.post("/api/expert/login", json={"name": "nora", "password": "nine chars"}).status_code == 200

    assert client.put(f"{USERS}/nora/role", json={"role": "operator"}, headers=csrf).json["role"] == "operator"
    assert nora.get("/api/expert/queue").status_code == 401, "a role change ends the session"
    assert store.users.get("nora").role == "operator"

    changed = client.put(f"{USERS}/nora/password", json={"password": "another secret"}, headers=csrf)
    assert changed.status_code == 200
    assert store.users.authenticate("nora", "another secret") and not store.users.authenticate("nora", "nine chars")

    assert client.put(f"{USERS}/nora/disabled", json={"disabled": True}, headers=csrf).json["disabled"] is True
    login = nora.post("/api/expert/login", json={"name": "nora", "password": "another secret"})
    assert login.status_code == 403 and login.json["error"]["code"] == "account_disabled"
    assert client.put(f"{USERS}/nora/disabled", json={"disabled": False}, headers=csrf).json["disabled"] is False
    assert nora.post("/api/expert/login", json={"name": "nora", "password": "another secret"}).status_code == 200

    assert client.post(f"{USERS}/nora/sign-out", headers=csrf).status_code == 200
    assert nora.get("/api/operator/runs").status_code == 401
    assert client.delete(f"{USERS}/nora", headers=csrf).json == {"removed": "nora"}
    assert "nora" not in {u["name"] for u in client.get(USERS).json["users"]}


@pytest.mark.parametrize("method, path, body, status, code, message", [
    ("post", USERS, {"name": "erin", "role": "expert", "password": PASSWORD}, 409, "conflict", "exists already"),
    ("post", USERS, {"name": "bad name!", "role": "expert", "password": PASSWORD}, 422, "invalid_request", "name"),
    ("post", USERS, {"name": "zed", "role": "customer", "password": PASSWORD}, 422, "invalid_request", "role"),
    ("post", USERS, {"name": "zed", "role": "expert", "password": "short"}, 422, "invalid_request", "8 characters"),
    ("put", f"{USERS}/nobody/role", {"role": "admin"}, 404, "not_found", "no user 'nobody'"),
    ("put", f"{USERS}/nobody/disabled", {"disabled": True}, 404, "not_found", "no user 'nobody'"),
    ("put", f"{USERS}/nobody/password", {"password": PASSWORD}, 404, "not_found", "no user 'nobody'"),
    ("put", f"{USERS}/erin/password", {"password": "short"}, 422, "invalid_request", "8 characters"),
    ("post", f"{USERS}/nobody/sign-out", None, 404, "not_found", "no user 'nobody'"),
    ("delete", f"{USERS}/nobody", None, 404, "not_found", "no user 'nobody'"),
    ("put", f"{USERS}/ada/role", {"role": "operator"}, 409, "conflict", "last enabled admin"),
    ("put", f"{USERS}/ada/disabled", {"disabled": True}, 409, "conflict", "last enabled admin"),
    ("delete", f"{USERS}/ada", None, 409, "conflict", "last enabled admin"),
])
def test_refused_account_changes_say_why(site, method, path, body, status, code, message):
    app, store = site
    client, csrf = admin_client(app)
    response = getattr(client, method)(path, json=body, headers=csrf)
    assert response.status_code == status and response.json["error"]["code"] == code, response.json
    assert message in response.json["error"]["message"]
    assert client.get(USERS).status_code == 200, "a refused change leaves the admin signed in"
    assert store.users.get("ada").role == "admin"


def test_the_last_enabled_admin_rule_counts_only_enabled_admins(site):
    _, store = site
    store.users.add("bea", "admin", PASSWORD)
    store.users.disable("ada")
    for change in (lambda: store.users.disable("bea"), lambda: store.users.remove("bea"),
                   lambda: store.users.set_role("bea", "expert")):
        with pytest.raises(ConflictError, match="bea is the last enabled admin"):
            change()
    store.users.remove("ada")
    store.users.set_role("erin", "admin")
    store.users.set_role("bea", "operator")
    assert [(u.name, u.role) for u in store.users.list() if u.role == "admin"] == [("erin", "admin")]


def test_an_admin_who_changes_their_own_password_stays_signed_in_while_other_sessions_end(site):
    app, store = site
    client, csrf = admin_client(app)
    other, _ = admin_client(app)
    assert client.put(f"{USERS}/ada/password", json={"password": "ada's new secret"}, headers=csrf).status_code == 200
    assert client.get(USERS).status_code == 200
    assert client.post(f"{USERS}/erin/sign-out", headers=csrf).status_code == 200, "the CSRF token still holds"
    assert other.get(USERS).status_code == 401
    assert store.users.authenticate("ada", "ada's new secret") is not None


@pytest.fixture
def cli(site, monkeypatch) -> tuple[CliRunner, FeedbackStore]:
    """``loopdesk`` on the site's Redis and key prefix."""
    _, store = site
    monkeypatch.setenv("LOOPDESK_DATA_DIR", str(store.settings.data_dir))
    monkeypatch.setenv("LOOPDESK_KEY_PREFIX", store.settings.key_prefix)
    return CliRunner(), store


def test_users_commands_change_accounts_and_end_their_sessions(site, cli):
    app, _ = site
    runner, store = cli
    client = app.test_client()

    def run(*args: str, input: str | None = None) -> str:
        result = runner.invoke(main, ["users", *args], input=input)
        assert result.exit_code == 0, result.output
        return result.output

    def signed_in_erin_is_signed_out() -> bool:
        return client.get("/api/expert/queue").status_code == 401

    sign_in(client, "erin")
    assert "disabled erin" in run("disable", "erin") and signed_in_erin_is_signed_out()
    assert "erin\texpert\tdisabled" in run("list") and store.users.get("erin").disabled
    assert "enabled erin" in run("enable", "erin") and not store.users.get("erin").disabled

    sign_in(client, "erin")
    output = run("passwd", "erin", input="a fresh password\na fresh password\n")
    assert "a fresh password" not in output and "password of erin changed" in output
    assert signed_in_erin_is_signed_out() and store.users.authenticate("erin", "a fresh password")

    client.post("/api/expert/login", json={"name": "erin", "password": "a fresh password"})
    assert "erin is now an operator" in run("role", "erin", "operator") and signed_in_erin_is_signed_out()
    assert store.users.get("erin").role == "operator"

    client.post("/api/expert/login", json={"name": "erin", "password": "a fresh password"})
    assert "ended every session of erin" in run("sign-out", "erin") and signed_in_erin_is_signed_out()

    declined = runner.invoke(main, ["users", "remove", "erin"], input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output and store.users.get("erin")
    assert "removed erin" in run("remove", "erin", input="y\n")
    assert "removed emil" in run("remove", "emil", "--yes")
    assert "erin" not in run("list") and "emil" not in run("list")


@pytest.mark.parametrize("args, input, code, message", [
    (["disable", "nobody"], None, 1, "no user 'nobody'"),
    (["enable", "nobody"], None, 1, "no user 'nobody'"),
    (["remove", "nobody", "--yes"], None, 1, "no user 'nobody'"),
    (["passwd", "nobody"], "long enough\nlong enough\n", 1, "no user 'nobody'"),
    (["passwd", "erin"], "short\nshort\n", 1, "at least 8 characters"),
    (["role", "nobody", "admin"], None, 1, "no user 'nobody'"),
    (["sign-out", "nobody"], None, 1, "no user 'nobody'"),
    (["role", "erin", "customer"], None, 2, "'customer' is not one of"),
    (["disable", "ada"], None, 1, "ada is the last enabled admin: make another account admin first"),
    (["remove", "ada", "--yes"], None, 1, "ada is the last enabled admin"),
    (["role", "ada", "expert"], None, 1, "ada is the last enabled admin"),
])
def test_users_commands_refuse_with_a_clear_error(cli, args, input, code, message):
    runner, store = cli
    result = runner.invoke(main, ["users", *args], input=input)
    assert result.exit_code == code and message in result.output, result.output
    assert store.users.get("ada").role == "admin" and not store.users.get("ada").disabled
