"""Console access rules: every console route refuses customers and the wrong role, every write
needs the CSRF token; sign-in, sessions, rate limits and ``loopdesk users add``."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner
from flask import Flask, url_for
from flask.testing import FlaskClient

from bot.app import create_app
from bot.sessions import secret_key
from feedback_store import FeedbackStore
from loopdesk.cli import main
from tests.console_helpers import (
    PASSWORD,
    add_accounts,
    login_form_token,
    register_record,
    seed_conversation,
    seed_handoff,
    sign_in,
)
from tests.web_helpers import GENEROUS_LIMIT, running_engine, started_app, web_settings

CONSOLE_PREFIXES = ("/expert", "/operator", "/admin", "/inbox", "/api/expert/", "/api/operator/", "/api/admin/",
                    "/api/inbox/")
PUBLIC_ENDPOINTS = {"auth.api_login", "auth.api_logout"}  # sign-in and sign-out check their own rules
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
WRONG_ROLES = {"expert": ("otto", "abe"), "operator": ("erin", "abe"), "admin": ("erin", "otto", "abe"),
               "agent": ("erin", "otto")}
RIGHT_ROLES = {"expert": ("erin", "ada"), "operator": ("otto", "ada"), "admin": ("ada",), "agent": ("abe", "ada")}

Call = Callable[[FeedbackStore], tuple[dict[str, Any], Any]]


def fresh_account(store: FeedbackStore) -> str:
    """A new expert account for one call of the Users API to change."""
    name = f"u{uuid.uuid4().hex[:10]}"
    store.users.add(name, "expert", PASSWORD)
    return name


def with_promoted_adapter(store: FeedbackStore) -> tuple[dict[str, Any], Any]:
    """A rollback needs an active adapter: promote a fresh one first."""
    store.adapters.promote(register_record(store).version)
    return {}, {"reason": "worse CSAT"}


# endpoint -> (fresh URL values and JSON body for one successful call, expected status)
CALLS: dict[str, tuple[Call, int]] = {
    "expert.console": (lambda s: ({}, None), 200),
    "expert.queue": (lambda s: ({"csat_max": 3}, None), 200),
    "expert.conversation": (lambda s: ({"conv_id": seed_conversation(s, 2).id}, None), 200),
    "expert.annotate": (lambda s: ({"conv_id": seed_conversation(s, 2).id, "index": 1},
                                   {"score": -1, "tags": ["wrong_info"], "corrected_reply": "Better."}), 201),
    "expert.export": (lambda s: ({}, None), 200),
    "operator.console": (lambda s: ({}, None), 200),
    "operator.schedules": (lambda s: ({}, None), 200),
    "operator.cron_preview": (lambda s: ({"cron": "0 3 * * *"}, None), 200),
    "operator.add_schedule": (lambda s: ({}, {"cron": "0 3 * * 1"}), 201),
    "operator.set_schedule_enabled": (lambda s: ({"schedule_id": s.schedules.add("0 4 * * *").id},
                                                 {"enabled": False}), 200),
    "operator.delete_schedule": (lambda s: ({"schedule_id": s.schedules.add("0 5 * * *").id}, None), 200),
    "operator.train_now": (lambda s: ({}, None), 202),
    "operator.runs": (lambda s: ({}, None), 200),
    "operator.run_progress": (lambda s: ({"run_id": s.runs.create({}).id}, None), 200),
    "operator.liveness": (lambda s: ({}, None), 200),
    "operator.adapters": (lambda s: ({}, None), 200),
    "operator.promote": (lambda s: ({"version": register_record(s).version}, {}), 200),
    "operator.send_to_canary": (lambda s: ({"version": register_record(s).version}, {}), 200),
    "operator.rollback": (with_promoted_adapter, 200),
    "operator.set_canary_share": (lambda s: ({}, {"share": 0.25}), 200),
    "operator.csat": (lambda s: ({"bucket": "hour"}, None), 200),
    "operator.handoffs": (lambda s: ({"days": 7}, None), 200),
    "inbox.console": (lambda s: ({}, None), 200),
    "inbox.conversations": (lambda s: ({}, None), 200),
    "inbox.conversation": (lambda s: ({"conv_id": seed_handoff(s)[0].id}, None), 200),
    "inbox.events": (lambda s: ({"conv_id": seed_handoff(s, ended=True)[0].id}, None), 200),
    "inbox.claim": (lambda s: ({"conv_id": seed_handoff(s)[0].id}, None), 200),
    "inbox.reply": (lambda s: ({"conv_id": seed_handoff(s, claimed_by="abe")[0].id}, {"text": "Hello, Abe here."}),
                    201),  # an admin may step into an agent's chat
    "inbox.transfer": (lambda s: ({"conv_id": seed_handoff(s, claimed_by="abe")[0].id}, None), 200),
    "inbox.resolve": (lambda s: ({"conv_id": seed_handoff(s, claimed_by="abe")[0].id}, None), 200),
    "inbox.presence": (lambda s: ({}, {"status": "online"}), 200),
    "admin.console": (lambda s: ({}, None), 200),
    "admin.users": (lambda s: ({}, None), 200),
    "admin.add_user": (lambda s: ({}, {"name": f"n{uuid.uuid4().hex[:10]}", "role": "expert", "password": PASSWORD}),
                       201),
    "admin.set_role": (lambda s: ({"name": fresh_account(s)}, {"role": "operator"}), 200),
    "admin.set_disabled": (lambda s: ({"name": fresh_account(s)}, {"disabled": True}), 200),
    "admin.set_password": (lambda s: ({"name": fresh_account(s)}, {"password": "a new long secret"}), 200),
    "admin.sign_out_everywhere": (lambda s: ({"name": fresh_account(s)}, None), 200),
    "admin.remove_user": (lambda s: ({"name": fresh_account(s)}, None), 200),
}


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, store, engine, app) with the accounts of every role; the model loads once for the module."""
    settings = web_settings(data_dir, base_model_dir, rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, engine, app


@pytest.fixture
def app(web) -> Flask:
    return web[3]


@pytest.fixture
def store(web) -> FeedbackStore:
    return web[1]


def console_role(path: str) -> str:
    """The role a console path needs, read from its first segment after an optional /api."""
    area = path.split("/")[1:3]
    if "inbox" in area:
        return "agent"
    return next((role for role in ("expert", "admin") if role in area), "operator")


def console_rules(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, role) of every console route."""
    return sorted(
        (rule.endpoint, method, console_role(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(CONSOLE_PREFIXES) and rule.endpoint not in PUBLIC_ENDPOINTS
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def request(app: Flask, client: FlaskClient, endpoint: str, method: str, store: FeedbackStore,
            csrf: str | None = None):
    make, _ = CALLS[endpoint]
    values, body = make(store)
    with app.test_request_context():
        url = url_for(endpoint, **values)
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return client.open(url, method=method, json=body, headers=headers)


def test_every_console_route_admits_only_its_role_and_writes_need_the_csrf_token(app, store):
    rules = console_rules(app)
    assert {endpoint for endpoint, _, _ in rules} == set(CALLS), "add the new route to CALLS"
    anonymous = app.test_client()
    signed_in = {name: app.test_client() for name in ("erin", "otto", "abe", "ada")}
    tokens = {name: sign_in(client, name) for name, client in signed_in.items()}
    for endpoint, method, role in rules:
        where = f"{method} {endpoint}"
        response = request(app, anonymous, endpoint, method, store)
        if endpoint.endswith(".console"):
            assert response.status_code == 302 and response.location.startswith("/login?next="), where
        else:
            assert response.status_code == 401 and response.json["error"]["code"] == "login_required", where

        for wrong in WRONG_ROLES[role]:
            response = request(app, signed_in[wrong], endpoint, method, store, tokens[wrong])
            assert response.status_code == 403, f"{where} as {wrong}"

        for name in RIGHT_ROLES[role]:
            if method in UNSAFE:
                response = request(app, signed_in[name], endpoint, method, store)
                assert response.status_code == 403 and response.json["error"]["code"] == "csrf_failed", where
                response = request(app, signed_in[name], endpoint, method, store, "forged-token")
                assert response.status_code == 403, where
            response = request(app, signed_in[name], endpoint, method, store, tokens[name])
            assert response.status_code == CALLS[endpoint][1], f"{where} as {name}: {response.get_data(as_text=True)}"


def test_pages_answer_a_wrong_role_with_a_readable_403(app):
    client = app.test_client()
    sign_in(client, "erin")
    response = client.get("/operator")
    assert response.status_code == 403
    assert "erin is an expert; this needs the operator role" in response.get_data(as_text=True)


def test_session_cookie_is_signed_httponly_and_samesite_lax(app):
    response = app.test_client().post("/api/expert/login", json={"name": "erin", "password": PASSWORD})
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("loopdesk_session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    forger = Flask("forger")
    forger.secret_key = "not the key"
    forged = app.test_client()
    forged.set_cookie("loopdesk_session",
                      forger.session_interface.get_signing_serializer(forger).dumps({"user": "ada"}))
    assert forged.get("/api/expert/queue").status_code == 401


def test_wrong_password_and_unknown_user_get_the_same_401(app):
    client = app.test_client()
    for name, password in (("erin", "wrong password"), ("nobody", PASSWORD)):
        response = client.post("/api/expert/login", json={"name": name, "password": password})
        assert response.status_code == 401 and response.json["error"]["code"] == "bad_credentials"
    assert client.get("/api/expert/queue").status_code == 401


def test_logout_needs_the_token_and_ends_the_session(app):
    client = app.test_client()
    token = sign_in(client, "erin")
    assert client.post("/api/expert/logout").status_code == 403
    assert client.get("/api/expert/queue").status_code == 200
    assert client.post("/api/expert/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert client.get("/api/expert/queue").status_code == 401


def test_login_form_needs_its_csrf_field_and_only_follows_local_next(app):
    client = app.test_client()
    form = {"name": "otto", "password": PASSWORD, "next": "//evil.example/steal"}
    assert client.post("/login", data=form).status_code == 403
    response = client.post("/login", data={**form, "csrf_token": login_form_token(client)})
    assert response.status_code == 302 and response.location == "/operator"
    response = client.post("/login", data={**form, "next": "/operator#runs", "csrf_token": login_form_token(client)})
    assert response.location == "/operator#runs"


def test_login_rotates_the_csrf_token(app):
    client = app.test_client()
    before = login_form_token(client)
    assert sign_in(client, "erin") != before


def test_login_attempts_are_rate_limited_per_ip(web):
    settings, store, engine, _ = web
    strict = settings.replace(rate_limit_login="3/minute", key_prefix=settings.key_prefix + "rl")
    client = create_app(strict, engine, store).test_client()
    answers = [client.post("/api/expert/login", json={"name": "erin", "password": "nope"}).status_code
               for _ in range(4)]
    assert answers == [401, 401, 401, 429]
    page = client.post("/login", data={"name": "erin", "password": PASSWORD})
    assert page.status_code == 429 and "Too many sign-in attempts" in page.get_data(as_text=True)
    assert client.get("/api/expert/queue").status_code == 401


def test_secret_key_is_generated_once_with_owner_only_permissions(tmp_path: Path, web):
    settings = web[0].replace(data_dir=tmp_path, secret_key="")
    first = secret_key(settings)
    assert len(first) >= 64 and secret_key(settings) == first
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    assert secret_key(settings.replace(secret_key="configured")) == "configured"


def test_users_add_prompts_for_the_password_twice_and_hides_it(web, monkeypatch):
    settings, store = web[0], web[1]
    monkeypatch.setenv("LOOPDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LOOPDESK_KEY_PREFIX", settings.key_prefix)
    runner = CliRunner()
    result = runner.invoke(main, ["users", "add", "olga", "--role", "operator"],
                           input="a long secret\na long secret\n")
    assert result.exit_code == 0, result.output
    assert "a long secret" not in result.output and "added operator olga" in result.output
    assert store.users.authenticate("olga", "a long secret").role == "operator"
    result = runner.invoke(main, ["users", "add", "olga", "--role", "expert"], input="another one\nanother one\n")
    assert result.exit_code == 1 and "exists already" in result.output
    result = runner.invoke(main, ["users", "add", "ivan", "--role", "customer"], input="x\n")
    assert result.exit_code == 2


def test_users_add_makes_an_agent_with_the_name_customers_see(web, monkeypatch):
    settings, store = web[0], web[1]
    monkeypatch.setenv("LOOPDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LOOPDESK_KEY_PREFIX", settings.key_prefix)
    result = CliRunner().invoke(main, ["users", "add", "sam", "--role", "agent", "--display-name", "Sam at Northwind"],
                                input="a long secret\na long secret\n")
    assert result.exit_code == 0 and "added agent sam" in result.output, result.output
    user = store.users.get("sam")
    assert (user.role, user.display_name, user.shown_name) == ("agent", "Sam at Northwind", "Sam at Northwind")
    assert store.users.get("otto").shown_name == "otto"
