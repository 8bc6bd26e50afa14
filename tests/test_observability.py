"""Health, readiness, Prometheus metrics, request ids and JSON access logs on the real app."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.observability import JsonFormatter
from bot.runtime import Engine
from feedback_store import FeedbackStore
from tests.adapter_helpers import wait_for
from tests.console_helpers import register_record
from tests.web_helpers import running_engine, started_app, web_settings

API = "/api/conversations"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, store, engine, app) with the model loaded once for the module."""
    settings = web_settings(data_dir, base_model_dir, max_reply_tokens=8)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, engine, app


def samples(app: Flask) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` scraped from the app's /metrics."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def chat_and_rate(app: Flask, score: int) -> str:
    client = app.test_client()
    created = client.post(API).json
    auth = {"Authorization": f"Bearer {created['token']}"}
    assert client.post(f"{API}/{created['conversation_id']}/messages", json={"text": "hi"},
                       headers=auth).status_code == 200
    assert client.post(f"{API}/{created['conversation_id']}/rating", json={"score": score},
                       headers=auth).status_code == 200
    return created["adapter_version"]


def unreachable_store(settings) -> FeedbackStore:
    """A store whose Redis port has nothing listening (and no retries, to fail fast)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return FeedbackStore(redis.Redis(port=port, retry=Retry(NoBackoff(), 0)), settings)


def test_healthz_and_readyz_report_a_serving_bot(web):
    client = web[3].test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["ready"] is True and ready.json["missing"] == []
    assert ready.json["checks"]["redis"] is True and ready.json["checks"]["model"] is True
    assert "base" in ready.json["checks"]["adapters"]["loaded"]


def test_readyz_names_a_refused_adapter_but_stays_ready(web):
    _, store, engine, app = web
    version = register_record(store).version  # its files do not exist: the engine refuses it
    store.adapters.send_to_canary(version)
    try:
        wait_for(lambda: version in engine.refused_versions())
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 200
        assert version in ready.json["checks"]["adapters"]["refused"]
    finally:
        store.adapters.reject(version, "test over")


def test_readyz_is_503_with_what_is_missing(web):
    settings, store, _, _ = web
    not_started = Engine(settings, store)
    with started_app(settings, unreachable_store(settings), not_started) as app:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.json["ready"] is False
        assert [m.split(":")[0] for m in response.json["missing"]] == ["redis", "model"]


def test_an_unreachable_store_is_a_503_json_error_counted_as_a_server_error(web):
    settings, _, engine, _ = web
    with started_app(settings, unreachable_store(settings), engine) as app:
        response = app.test_client().post(API)
        assert response.status_code == 503 and response.json["error"]["code"] == "store_unavailable"
        scraped = samples(app)
        key = ("loopdesk_http_errors_total", (("endpoint", "chat.start"), ("status", "503")))
        assert scraped[key] == 1
        assert scraped[("loopdesk_redis_up", ())] == 0


def test_metrics_count_requests_replies_csat_and_runs(web):
    _, store, _, app = web
    before = samples(app)
    version = chat_and_rate(app, 4)
    chat_and_rate(app, 2)
    for status in ("succeeded", "failed", "failed"):
        run = store.runs.create({}, trigger="test")
        store.runs.finish(run.id, status)
    after = samples(app)

    def grew(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0)

    ok_message = (("endpoint", "chat.post_message"), ("method", "POST"), ("status", "200"))
    assert grew("loopdesk_http_requests_total", ok_message) == 2
    assert grew("loopdesk_time_to_first_token_seconds_count") == 2
    assert grew("loopdesk_reply_tokens_per_second_count") == 2
    assert after[("loopdesk_reply_tokens_per_second_sum", ())] > 0
    assert after[("loopdesk_generation_queue_depth", ())] == 0
    assert after[("loopdesk_csat_mean", (("role", "active"), ("version", version)))] == 3.0
    assert after[("loopdesk_csat_ratings", (("role", "active"), ("version", version)))] == 2
    assert after[("loopdesk_training_runs", (("status", "failed"),))] == 2
    assert after[("loopdesk_training_runs", (("status", "succeeded"),))] == 1
    assert after[("loopdesk_redis_up", ())] == 1


def test_each_app_has_its_own_registry(web):
    settings, store, engine, app = web
    healthz = ("loopdesk_http_requests_total", (("endpoint", "observability.healthz"), ("method", "GET"),
                                                ("status", "200")))
    before = samples(app).get(healthz, 0)
    with started_app(settings, store, engine) as other:
        for _ in range(3):
            other.test_client().get("/healthz")
        assert samples(other)[healthz] == 3
        assert samples(app).get(healthz, 0) == before


def test_request_id_is_echoed_or_made_and_logged_as_json(web, caplog):
    app = web[3]
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="bot.access"):
        given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        given.close()
        made = client.get("/api/conversations/nope", headers={"X-Request-ID": "bad id <with> spaces"})
        made.close()
    assert given.headers["X-Request-ID"] == "abc-123"
    assert len(made.headers["X-Request-ID"]) == 32
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "bot.access"]
    assert [(e["method"], e["path"], e["status"], e["request_id"]) for e in lines] == [
        ("GET", "/healthz", 200, "abc-123"),
        ("GET", "/api/conversations/nope", 401, made.headers["X-Request-ID"]),
    ]
    assert all(isinstance(e["duration_ms"], float) and e["level"] == "INFO" for e in lines)
