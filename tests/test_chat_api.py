"""The chat API against the real engine (test-size model) and real Redis, through Flask's test client."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, run_wsgi_app

from bot.app import create_app
from bot.errors import describe
from bot.runtime import Engine
from feedback_store import FeedbackStore
from feedback_store.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RatingLockedError,
    ValidationFailed,
)
from feedback_store.records import BotTurn, CustomerTurn
from loopdesk.config import Settings
from tests.web_helpers import parse_sse, running_engine, started_app, web_settings

API = "/api/conversations"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, store, engine, app): the model loads once for the whole module."""
    settings = web_settings(data_dir, base_model_dir, max_message_chars=200, max_request_bytes=4096)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, engine, app


@pytest.fixture
def store(web) -> FeedbackStore:
    return web[1]


@pytest.fixture
def client(web) -> FlaskClient:
    return web[3].test_client()


def start(client: FlaskClient) -> tuple[str, dict[str, str]]:
    response = client.post(API)
    assert response.status_code == 201, response.json
    body = response.json
    return body["conversation_id"], {"Authorization": f"Bearer {body['token']}"}


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == code and error["message"]
    return error["message"]


# ---- the happy path ----------------------------------------------------------------------

def test_start_pins_the_conversation_to_a_version_the_engine_serves(client, store, web):
    response = client.post(API, json={"meta": {"page": "https://shop.example/boots"}})
    assert response.status_code == 201
    body = response.json
    assert response.headers["Location"] == f"{API}/{body['conversation_id']}"
    conv = store.conversations.get(body["conversation_id"])
    assert conv.adapter_version == body["adapter_version"] in web[2].loaded_versions()
    assert conv.meta == {"page": "https://shop.example/boots"}
    assert store.conversations.check_token(conv.id, body["token"])


def test_message_logs_customer_turn_then_bot_turn_with_ppo_sample(client, store):
    conv_id, auth = start(client)
    response = client.post(f"{API}/{conv_id}/messages", json={"text": "Where is my order?"}, headers=auth)
    assert response.status_code == 200, response.json
    reply = response.json
    customer, bot = store.conversations.turns(conv_id)
    assert isinstance(customer, CustomerTurn) and customer.text == "Where is my order?"
    assert isinstance(bot, BotTurn) and reply["turn_index"] == bot.index == 1
    assert reply["text"] == bot.text and reply["finished"] == bot.finished
    assert bot.adapter_version == reply["adapter_version"] == store.conversations.get(conv_id).adapter_version
    assert "Where is my order?" in bot.context
    assert bot.prompt_token_ids and len(bot.reply_token_ids) == len(bot.logprobs) > 0
    assert bot.latency_ms > 0


def test_the_model_sees_the_whole_conversation(client, store):
    conv_id, auth = start(client)
    client.post(f"{API}/{conv_id}/messages", json={"text": "I want to return my boots."}, headers=auth)
    first_reply = store.conversations.turns(conv_id)[1].text
    client.post(f"{API}/{conv_id}/messages", json={"text": "How long does a refund take?"}, headers=auth)
    last = store.conversations.turns(conv_id)[-1]
    assert last.index == 3
    context = last.context
    assert context.index("I want to return my boots.") < context.index("How long does a refund take?")
    assert first_reply.strip() in context


def test_reply_streams_as_server_sent_events(client, store):
    conv_id, auth = start(client)
    response = client.post(f"{API}/{conv_id}/messages", json={"text": "Do you ship abroad?"},
                           headers={**auth, "Accept": "text/event-stream"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = parse_sse(response.response)
    *deltas, (last_event, done) = events
    assert last_event == "done"
    assert deltas and {event for event, _ in deltas} == {"delta"}
    assert "".join(d["text"] for _, d in deltas) == done["text"]
    assert done["turn_index"] == 1 and store.conversations.turns(conv_id)[1].text == done["text"]


def test_generation_failure_is_a_503_or_an_error_event(web):
    settings, store = web[0], web[1]
    with started_app(settings, store, Engine(settings, store)) as stopped_app:
        stopped = stopped_app.test_client()
        conv, token = store.conversations.start("base")
        url, auth = f"{API}/{conv.id}/messages", {"Authorization": f"Bearer {token}"}
        assert "not running" in assert_error(stopped.post(url, json={"text": "hello"}, headers=auth),
                                             503, "generation_failed")
        streamed = stopped.post(url, json={"text": "hello"}, headers={**auth, "Accept": "text/event-stream"})
        assert streamed.status_code == 200
        (event, data), = parse_sse(streamed.response)
        assert event == "error" and data["error"]["code"] == "generation_failed"
        assert [t.role for t in store.conversations.turns(conv.id)] == ["user", "user"]


def test_transcript_is_for_the_token_holder(client):
    conv_id, auth = start(client)
    client.post(f"{API}/{conv_id}/messages", json={"text": "Hi <b>there</b>"}, headers=auth)
    transcript = client.get(f"{API}/{conv_id}", headers=auth).json
    assert [(t["index"], t["role"]) for t in transcript["turns"]] == [(0, "user"), (1, "assistant")]
    assert transcript["turns"][0]["text"] == "Hi <b>there</b>"
    assert "context" not in transcript["turns"][1] and transcript["status"] == "open"
    _, other_auth = start(client)
    assert_error(client.get(f"{API}/{conv_id}", headers=other_auth), 403, "forbidden")


def test_ended_conversation_refuses_messages_and_end_is_idempotent(client, store):
    conv_id, auth = start(client)
    first = client.post(f"{API}/{conv_id}/end", headers=auth)
    assert first.status_code == 200 and first.json["status"] == "ended"
    again = client.post(f"{API}/{conv_id}/end", headers=auth)
    assert again.json["ended_at"] == first.json["ended_at"]
    message = assert_error(client.post(f"{API}/{conv_id}/messages", json={"text": "hi"}, headers=auth),
                           409, "conflict")
    assert "ended" in message
    assert store.conversations.turns(conv_id) == []


def test_rating_is_idempotent_and_correctable(client, store):
    conv_id, auth = start(client)
    assert client.post(f"{API}/{conv_id}/messages", json={"text": "hi"}, headers=auth).status_code == 200
    client.post(f"{API}/{conv_id}/end", headers=auth)
    rate = lambda body: client.post(f"{API}/{conv_id}/rating", json=body, headers=auth)  # noqa: E731
    assert rate({"score": 4, "comment": "quick"}).json["changed"] is True
    assert rate({"score": 4, "comment": "quick"}).json["changed"] is False
    corrected = rate({"score": 2})
    assert corrected.status_code == 200 and corrected.json == {
        "conversation_id": conv_id, "score": 2, "comment": "", "changed": True}
    conv = store.conversations.get(conv_id)
    assert (conv.csat, conv.csat_comment) == (2, "")


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, code", [
    (b"{", 400, "invalid_json"),
    (b'{"text": "caf\xe9"}', 400, "bad_encoding"),
    (b'["hello"]', 422, "invalid_request"),
    (b"{}", 422, "invalid_request"),
    (b'{"text": 5}', 422, "invalid_request"),
    (b'{"text": "hi", "extra": 1}', 422, "invalid_request"),
    (b'{"text": "   "}', 422, "invalid_request"),
    (b'{"text": "' + b"x" * 201 + b'"}', 422, "message_too_long"),
])
def test_bad_message_bodies_get_json_4xx(client, store, body, status, code):
    conv_id, auth = start(client)
    response = client.post(f"{API}/{conv_id}/messages", data=body, content_type="application/json", headers=auth)
    assert_error(response, status, code)
    assert store.conversations.turns(conv_id) == []


def test_message_at_the_length_cap_is_accepted(client):
    conv_id, auth = start(client)
    assert client.post(f"{API}/{conv_id}/messages", json={"text": "é" * 200}, headers=auth).status_code == 200


def test_non_json_content_type_is_415(client):
    conv_id, auth = start(client)
    response = client.post(f"{API}/{conv_id}/messages", data="text=hi", headers=auth,
                           content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


class Unreadable(io.BytesIO):
    """A request body that fails the test if the server reads it."""

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the oversized body was read")

    readinto = readline = read


def test_oversized_body_is_refused_before_it_is_read(web, client):
    conv_id, auth = start(client)
    environ = EnvironBuilder(path=f"{API}/{conv_id}/messages", method="POST", headers=auth,
                             content_type="application/json").get_environ()
    environ.update({"CONTENT_LENGTH": str(10**9), "wsgi.input": Unreadable()})
    body, status, _ = run_wsgi_app(web[3], environ, buffered=True)
    error = json.loads(b"".join(body))["error"]
    assert (status, error["code"]) == ("413 REQUEST ENTITY TOO LARGE", "body_too_large")
    assert "4096 bytes" in error["message"]


@pytest.mark.parametrize("path, method", [
    ("/messages", "post"), ("/end", "post"), ("/rating", "post"), ("", "get"),
])
def test_token_is_required_and_checked(client, path, method):
    conv_id, auth = start(client)
    call = getattr(client, method)
    body = {"text": "hi"} if path == "/messages" else {"score": 5} if path == "/rating" else None
    assert_error(call(f"{API}/{conv_id}{path}", json=body), 401, "missing_token")
    assert_error(call(f"{API}/{conv_id}{path}", json=body, headers={"Authorization": "Basic abc"}), 401,
                 "missing_token")
    assert_error(call(f"{API}/{conv_id}{path}", json=body, headers={"Authorization": "Bearer wrong"}), 403,
                 "forbidden")
    assert_error(call(f"{API}/no-such-conversation{path}", json=body, headers=auth), 404, "not_found")


@pytest.mark.parametrize("body", [{"score": 0}, {"score": 6}, {"score": "five"}, {}, {"score": 3, "comment": "x" * 2001}])
def test_invalid_ratings_are_422(client, body):
    conv_id, auth = start(client)
    assert_error(client.post(f"{API}/{conv_id}/rating", json=body, headers=auth), 422, "invalid_request")


def test_unknown_routes_and_methods_answer_in_the_error_shape(client):
    assert_error(client.get("/api/nothing-here"), 404, "not_found")
    response = client.delete(API)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("error, status, code", [
    (ValidationFailed("bad"), 422, "invalid_request"),
    (NotFoundError("gone"), 404, "not_found"),
    (ForbiddenError("no"), 403, "forbidden"),
    (ConflictError("ended"), 409, "conflict"),
    (RatingLockedError("late"), 409, "rating_locked"),
])
def test_store_errors_map_to_their_status(error, status, code):
    assert describe(error) == (status, code, str(error))


# ---- rate limits and CORS ----------------------------------------------------------------

def limited_app(web, **limits: str) -> Flask:
    """The module's engine and store behind an app with tight limits (a fresh limiter namespace)."""
    settings: Settings = web[0]
    tight = settings.replace(key_prefix=f"rl{uuid.uuid4().hex[:12]}", **limits)
    return create_app(tight, web[2], web[1])


def test_messages_are_rate_limited_per_conversation(web):
    client = limited_app(web, rate_limit_per_conversation="2/minute").test_client()
    conv_id, auth = start(client)
    for _ in range(2):
        assert client.post(f"{API}/{conv_id}/messages", json={"text": "hi"}, headers=auth).status_code == 200
    limited = client.post(f"{API}/{conv_id}/messages", json={"text": "hi"}, headers=auth)
    assert "2 per 1 minute" in assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0
    other_id, other_auth = start(client)
    assert client.post(f"{API}/{other_id}/messages", json={"text": "hi"}, headers=other_auth).status_code == 200


def test_api_is_rate_limited_per_ip(web):
    client = limited_app(web, rate_limit_per_ip="3/minute").test_client()
    for _ in range(3):
        assert client.post(API).status_code == 201
    assert_error(client.post(API), 429, "rate_limited")
    assert client.post(API, environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 201


def test_api_allows_cross_origin_calls_including_errors(client):
    preflight = client.options(API, headers={"Origin": "https://shop.example",
                                             "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = client.get(f"{API}/unknown", headers={"Origin": "https://shop.example"})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
