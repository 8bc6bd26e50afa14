"""Hostile input against a live bot: schemathesis fuzzes every documented operation and no answer is a
server error (only the 503s an operation documents are allowed). Script and HTML payloads in a
transcript render inert in the expert console: ``tests/test_console_browser.py``. Oversized bodies
are refused before being read: ``tests/test_chat_api.py``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.schemas  # noqa: F401  loaded at collection, before any app thread runs
# (schemathesis imports its OpenAPI loader lazily; on CPython 3.11.7 see tests/conftest.py on ast.parse)
from hypothesis import HealthCheck, settings

from bot.app import create_app
from feedback_store import FeedbackStore
from harness.serving import serve
from tests.console_helpers import PASSWORD, add_accounts
from tests.web_helpers import GENEROUS_LIMIT, running_engine, web_settings

CONSOLE_API = ("/api/expert/", "/api/operator/", "/api/admin/")
SIGN_IN_OUT = ("/api/expert/login", "/api/expert/logout")


@pytest.fixture(scope="module")
def live_bot(data_dir: Path, base_model_dir: Path):
    """The real app on a live HTTP server, with console accounts and an admin's signed-in session."""
    config = web_settings(data_dir, base_model_dir, max_reply_tokens=8, rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(config, announce=False)
    add_accounts(store)
    with running_engine(config, store) as engine, serve(create_app(config, engine, store)) as url:
        admin = requests.Session()
        signed_in = admin.post(url + "api/expert/login", json={"name": "ada", "password": PASSWORD}, timeout=30)
        admin.headers["X-CSRF-Token"] = signed_in.json()["csrf_token"]
        yield SimpleNamespace(url=url, store=store, admin=admin)


@pytest.fixture(scope="module")
def api_schema(live_bot):
    return schemathesis.openapi.from_url(live_bot.url + "openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def documented_statuses(case) -> set[int]:
    return {int(status) for status in case.operation.definition.raw["responses"] if status.isdigit()}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_server_error(case, live_bot):
    """Generated bodies, parameters and headers; the customer's operations run on a real conversation
    with its token, the consoles' with a signed-in admin, so validation deep inside is reached too."""
    kwargs = {"timeout": 30}
    if case.path.startswith("/api/conversations/"):
        conv, token = live_bot.store.conversations.start("base")
        case.path_parameters["conv_id"] = conv.id
        kwargs["headers"] = {"Authorization": f"Bearer {token}"}
    elif case.path.startswith(CONSOLE_API) and case.path not in SIGN_IN_OUT:
        kwargs["session"] = live_bot.admin
    response = case.call(**kwargs)
    status = response.status_code
    assert status < 500 or (status == 503 and 503 in documented_statuses(case)), (
        f"{case.method} {case.formatted_path}: {status} {response.text[:300]}")
    if status >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
        assert set(response.json()) == {"error"}
