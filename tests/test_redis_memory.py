"""A Redis with ``maxmemory`` and ``noeviction``: the embedded one starts so, /metrics shows how full it
is, a full one refuses writes with a 503 and loses nothing already stored, and erasure and pruning
still get through (they delete before they write)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback_store import FeedbackStore
from feedback_store.errors import STORE_FULL
from feedback_store.server import stop_embedded_redis
from tests.store_helpers import chat, consume_feedback, started_days_ago
from tests.web_helpers import running_engine, started_app, web_settings

API = "/api/conversations"
MAXMEMORY = 6 * 1024 * 1024


@pytest.fixture
def capped(tmp_path: Path, base_model_dir: Path):
    """(store, app) on an embedded Redis of its own started with maxmemory 6mb."""
    settings = web_settings(tmp_path, base_model_dir, redis_maxmemory="6mb")
    store = FeedbackStore.from_settings(settings, announce=False)
    try:
        with running_engine(settings, store) as engine:
            with started_app(settings, store, engine) as app:  # its knowledge index stops before this Redis
                yield store, app
    finally:
        stop_embedded_redis(tmp_path)


def fill(store) -> int:
    """Write filler keys until Redis refuses one; returns how many went in."""
    written = 0
    while True:
        pipe = store.redis.pipeline(transaction=False)
        for _ in range(100):
            pipe.set(f"{store.keys.prefix}:filler:{written}", "x" * 200)
            written += 1
        try:
            pipe.execute()
        except STORE_FULL:
            return written


def gauge(client, name: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_full_redis_answers_503_keeps_what_it_has_and_still_erases_and_prunes(capped, monkeypatch):
    store, app = capped
    client = app.test_client()
    assert store.redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert gauge(client, "loopdesk_redis_memory_max_bytes") == MAXMEMORY
    assert 0 < gauge(client, "loopdesk_redis_memory_used_ratio") < 0.5
    with started_days_ago(monkeypatch, 91):
        old, old_token = chat(store)
        store.ratings.rate(old.id, old_token, 3)
    consume_feedback(store)
    created = client.post(API).json
    conv_id, auth = created["conversation_id"], {"Authorization": f"Bearer {created['token']}"}
    answered = client.post(f"{API}/{conv_id}/messages", json={"text": "Where is my order?"}, headers=auth)
    assert answered.status_code == 200
    turns_before = store.conversations.turns(conv_id)

    fill(store)

    assert gauge(client, "loopdesk_redis_memory_used_ratio") > 0.95
    for refused in (client.post(API),
                    client.post(f"{API}/{conv_id}/messages", json={"text": "Hello again"}, headers=auth)):
        assert refused.status_code == 503, refused.get_data(as_text=True)
        assert refused.json["error"]["code"] == "store_full"
    assert store.conversations.turns(conv_id) == turns_before
    # A rating's script starts by trimming the client's cap window, a deletion, after which Redis lets a
    # script write: it is stored whole or refused whole, never half.
    rated = client.post(f"{API}/{conv_id}/rating", json={"score": 5}, headers=auth)
    stored = store.conversations.get(conv_id)
    assert (rated.status_code, stored.csat) in ((200, 5), (503, None)), rated.get_data(as_text=True)
    assert len(store.redis.lrange(store.keys.rating_history(conv_id), 0, -1)) == (stored.csat is not None)

    pruned = store.retention.prune()  # it deletes before it writes the numbers, so a full Redis lets it through
    assert (pruned.pruned, pruned.numbers_kept) == (1, 1) and store.erasure.pruned(old.id).csat == 3
    assert client.delete(f"{API}/{conv_id}", headers=auth).status_code == 204
    assert store.erasure.erased(conv_id) is not None and store.conversations.recent() == []

    store.redis.delete(*store.redis.keys(f"{store.keys.prefix}:filler:*"))
    assert client.post(API).status_code == 201
