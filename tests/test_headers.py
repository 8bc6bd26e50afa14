"""Every response carries the security headers; CORS answers only on the chat and help-centre APIs
and the widget's files; the demo page never reflects the Host header; no page holds inline code the
CSP would block.
(The widget and consoles running under the CSP in Chromium: tests/test_*_browser.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bot.app import create_app
from bot.headers import security_headers
from feedback_store import FeedbackStore
from loopdesk.config import SettingsError
from tests.console_helpers import add_accounts, sign_in
from tests.web_helpers import GENEROUS_LIMIT, running_engine, started_app, web_settings

TEMPLATES = Path(__file__).resolve().parent.parent / "bot" / "templates"
SHOP = "https://shop.example"
PREFLIGHT = {"Origin": SHOP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    settings = web_settings(data_dir, base_model_dir, rate_limit_login=GENEROUS_LIMIT, max_reply_tokens=4)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, engine, app


@pytest.fixture
def app(web) -> Flask:
    return web[3]


def app_with(web, **changes) -> Flask:
    settings, store, engine, _ = web
    return create_app(settings.replace(**changes), engine, store)


def admin(app: Flask) -> FlaskClient:
    client = app.test_client()
    sign_in(client, "ada")
    return client


def test_html_json_static_and_error_responses_all_carry_the_security_headers(web, app):
    client = admin(app)
    conversation = client.post("/api/conversations")
    responses = {
        "demo page": client.get("/"), "login page": client.get("/login"), "operator console": client.get("/operator"),
        "users page": client.get("/admin/users"), "console API": client.get("/api/admin/users"),
        "knowledge page": client.get("/knowledge"), "help centre": client.get("/help"),
        "chat API": conversation, "openapi": client.get("/openapi.json"), "widget.js": client.get("/static/widget.js"),
        "error": client.get("/api/conversations/nope"), "metrics": client.get("/metrics"),
    }
    assert responses["chat API"].status_code == 201 and responses["error"].status_code == 401
    expected = security_headers(web[0])
    for what, response in responses.items():
        for name, value in expected.items():
            assert response.headers.get(name) == value, f"{what}: {name}"
    policy = expected["Content-Security-Policy"].split("; ")
    assert {"script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} <= set(policy)
    assert not any("unsafe" in directive for directive in policy)
    assert (expected["X-Frame-Options"], expected["X-Content-Type-Options"]) == ("DENY", "nosniff")
    assert expected["Referrer-Policy"] == "same-origin"


def cors(response) -> str | None:
    return response.headers.get("Access-Control-Allow-Origin")


def test_cors_answers_the_chat_and_help_apis_and_widget_files_only(app):
    client = app.test_client()
    created = client.post("/api/conversations", headers={"Origin": SHOP})
    assert cors(created) == "*" and "Authorization" in created.headers["Access-Control-Allow-Headers"]
    conv = created.json["conversation_id"]
    preflight = client.options(f"/api/conversations/{conv}/messages", headers=PREFLIGHT)
    assert preflight.status_code == 200 and cors(preflight) == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert cors(client.get("/static/widget.js", headers={"Origin": SHOP})) == "*"
    assert cors(client.get("/static/widget.css", headers={"Origin": SHOP})) == "*"
    assert cors(client.get("/api/help/articles", headers={"Origin": SHOP})) == "*"
    assert cors(client.options("/api/help/articles", headers={**PREFLIGHT, "Access-Control-Request-Method": "GET"})) == "*"

    signed_in = admin(app)
    closed = {
        "JSON login": client.post("/api/expert/login", json={"name": "ada", "password": "x"}, headers={"Origin": SHOP}),
        "login preflight": client.options("/api/expert/login", headers=PREFLIGHT),
        "login form": client.post("/login", headers={"Origin": SHOP}),
        "expert API": signed_in.get("/api/expert/queue", headers={"Origin": SHOP}),
        "operator API": signed_in.get("/api/operator/runs", headers={"Origin": SHOP}),
        "users API": signed_in.get("/api/admin/users", headers={"Origin": SHOP}),
        "knowledge API": signed_in.get("/api/kb/articles", headers={"Origin": SHOP}),
        "knowledge page": signed_in.get("/knowledge", headers={"Origin": SHOP}),
        "help page": client.get("/help", headers={"Origin": SHOP}),
        "users preflight": client.options("/api/admin/users", headers=PREFLIGHT),
        "console page": signed_in.get("/operator", headers={"Origin": SHOP}),
        "console script": client.get("/static/console.js", headers={"Origin": SHOP}),
        "openapi": client.get("/openapi.json", headers={"Origin": SHOP}),
    }
    for what, response in closed.items():
        assert not any(h.startswith("Access-Control-") for h in response.headers.keys()), what


def test_configured_origins_are_echoed_and_others_refused(web):
    client = app_with(web, cors_origins=f"{SHOP}, https://other.example").test_client()
    allowed = client.post("/api/conversations", headers={"Origin": SHOP})
    assert cors(allowed) == SHOP and "Origin" in allowed.headers["Vary"]
    refused = client.post("/api/conversations", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 201 and cors(refused) is None and "Origin" in refused.headers["Vary"]


def widget_tag(html: str) -> str:
    return re.search(r"<script src=\"[^\"]*widget\.js\"[^>]*>", html, re.S).group(0)


def test_the_demo_page_never_reflects_the_host_header(web, app):
    page = app.test_client().get("/", headers={"Host": "evil.example"}, base_url="http://evil.example")
    html = page.get_data(as_text=True)
    assert "evil.example" not in html
    assert 'data-bot-url="/"' in widget_tag(html) and 'src="/static/widget.js"' in widget_tag(html)

    configured = app_with(web, public_url="https://help.example.com/").test_client()
    page = configured.get("/", base_url="http://evil.example")
    html = page.get_data(as_text=True)
    assert 'data-bot-url="https://help.example.com/"' in widget_tag(html) and "evil.example" not in html
    assert "connect-src 'self' https://help.example.com;" in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize("url", ["help.example.com", "javascript:alert(1)", "https://", "https://h.example/?x=1",
                                 "ftp://h.example/"])
def test_a_public_url_that_is_not_an_http_url_is_refused_at_start(web, url):
    with pytest.raises(SettingsError, match="LOOPDESK_PUBLIC_URL must be an http"):
        app_with(web, public_url=url)


INLINE_CODE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "a <style> element"),
    (re.compile(r"\sstyle\s*=", re.I), "a style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an event-handler attribute"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_no_template_holds_code_the_content_security_policy_would_block(template):
    html = (TEMPLATES / template).read_text(encoding="utf-8")
    for pattern, what in INLINE_CODE:
        assert not pattern.search(html), f"{template} has {what}: move it to bot/static"
