"""Who may rate and how a rating is counted, over the real chat API (real engine, real Redis): only a
conversation the bot answered, with its provenance as keyed hashes (never the address), and at most
a client's cap of counted ratings per window; the rest are stored and acknowledged with weight 0."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from pathlib import Path

import pytest
from flask import Flask

from bot.app import create_app
from feedback_store import FeedbackStore, UnansweredError
from tests.store_helpers import bot_turn
from tests.web_helpers import running_engine, web_settings

API = "/api/conversations"
ADDRESS = "203.0.113.77"
AGENT = "FloodBot/9.1 (+https://flood.example)"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, engine): the model loads once for the module; each test builds its own app and key prefix."""
    settings = web_settings(data_dir, base_model_dir, max_reply_tokens=4)
    with running_engine(settings, FeedbackStore.from_settings(settings, announce=False)) as engine:
        yield settings, engine


def app_with(web, **changes) -> tuple[Flask, FeedbackStore]:
    settings = web[0].replace(key_prefix=f"p{uuid.uuid4().hex[:12]}", **changes)
    store = FeedbackStore.from_settings(settings, announce=False)
    return create_app(settings, web[1], store), store


def chat_and_rate(app: Flask, address: str, score: int = 4, agent: str = "Mozilla/5.0", answered: bool = True,
                  headers: dict[str, str] | None = None):
    """One customer from ``address``: start, one message (unless not ``answered``), rate; (conv id, auth, answer)."""
    client = app.test_client()
    env = {"REMOTE_ADDR": address}
    sent = {"User-Agent": agent, **(headers or {})}
    created = client.post(API, environ_base=env, headers=sent).json
    auth = {**sent, "Authorization": f"Bearer {created['token']}"}
    if answered:
        assert client.post(f"{API}/{created['conversation_id']}/messages", json={"text": "Where is my order?"},
                           headers=auth, environ_base=env).status_code == 200
    rated = client.post(f"{API}/{created['conversation_id']}/rating", json={"score": score}, headers=auth,
                        environ_base=env)
    return created["conversation_id"], auth, rated


def test_a_conversation_the_bot_has_not_answered_cannot_be_rated(web):
    app, store = app_with(web)
    conv_id, auth, rated = chat_and_rate(app, ADDRESS, answered=False)
    assert rated.status_code == 409 and rated.json["error"]["code"] == "not_answered"
    assert "has not answered" in rated.json["error"]["message"]
    client = app.test_client()
    client.post(f"{API}/{conv_id}/end", headers=auth)
    assert client.post(f"{API}/{conv_id}/rating", json={"score": 5}, headers=auth).status_code == 409
    assert store.conversations.get(conv_id).csat is None and store.feedback.watermark() == 0
    assert store.redis.llen(store.keys.rating_history(conv_id)) == 0
    # the store refuses it too, and a customer turn alone is no answer
    conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "hello?")
    with pytest.raises(UnansweredError, match="at least one bot reply"):
        store.ratings.rate(conv.id, token, 1)
    store.conversations.append_bot(conv.id, bot_turn())
    assert store.ratings.rate(conv.id, token, 1) is True


def _everything_under(store: FeedbackStore) -> list[str]:
    """Every key of this store's prefix (the rate limiter's included) and every value in it, as text."""
    r = store.redis
    texts = []
    for key in r.scan_iter(match=f"*{store.keys.prefix}*", count=1000):
        kind = r.type(key)
        values = {"string": lambda: [r.get(key)], "hash": lambda: [x for kv in r.hgetall(key).items() for x in kv],
                  "list": lambda: r.lrange(key, 0, -1), "set": lambda: list(r.smembers(key)),
                  "zset": lambda: [m for m, _ in r.zrange(key, 0, -1, withscores=True)],
                  "stream": lambda: [str(e) for e in r.xrange(key)]}[kind]()
        texts += [key, *map(str, values)]
    return texts


def test_provenance_is_stored_as_keyed_hashes_and_the_address_nowhere(web):
    app, store = app_with(web)
    conv_id, _, rated = chat_and_rate(app, ADDRESS, agent=AGENT)
    assert rated.status_code == 200
    conv = store.conversations.get(conv_id)
    key = (Path(web[0].data_dir) / "client_hash_key").read_text().strip().encode()
    expected = hmac.new(key, f"address:{ADDRESS}".encode(), hashlib.sha256).hexdigest()[:32]
    assert conv.client_hash == expected == conv.rater
    assert conv.agent_hash == hmac.new(key, f"agent:{AGENT}".encode(), hashlib.sha256).hexdigest()[:32]
    assert conv.client_hash != hashlib.sha256(ADDRESS.encode()).hexdigest()[:32]  # keyed, not a bare hash
    assert (conv.csat_weight, conv.csat_weight_reason) == (1.0, "")
    history = store.redis.lrange(store.keys.rating_history(conv_id), 0, -1)
    assert expected in history[0] and conv.agent_hash in history[0]
    stored = _everything_under(store)
    assert any("ratelimit" in text for text in stored), "the rate limiter's keys were not scanned"
    assert len(stored) > 10
    leaked = [text for text in stored if ADDRESS in text or "FloodBot" in text or "203.0.113" in text]
    assert leaked == []


def test_ratings_beyond_a_clients_cap_are_acknowledged_stored_and_weigh_nothing(web):
    app, store = app_with(web, rating_client_cap=2)
    answers = [chat_and_rate(app, ADDRESS, score) for score in (5, 5, 5)]
    assert [a[2].status_code for a in answers] == [200, 200, 200]
    assert {tuple(sorted(a[2].json)) for a in answers} == {("changed", "comment", "conversation_id", "score")}
    assert all(a[2].json["changed"] for a in answers)  # the third looks the same to whoever sent it
    convs = [store.conversations.get(a[0]) for a in answers]
    assert [c.csat_weight for c in convs] == [1.0, 1.0, 0.0]
    assert convs[2].csat == 5 and convs[2].csat_weight_reason.startswith("client_cap")
    other, _, _ = chat_and_rate(app, "198.51.100.20", 2)
    assert store.conversations.get(other).csat_weight == 1.0  # another client has its own cap
    client = app.test_client()
    for (conv_id, auth, _), weight in zip(answers, (1.0, 1.0, 0.0)):
        corrected = client.post(f"{API}/{conv_id}/rating", json={"score": 3}, headers=auth,
                                environ_base={"REMOTE_ADDR": ADDRESS})
        assert corrected.status_code == 200 and corrected.json["changed"] is True  # corrections still work
        conv = store.conversations.get(conv_id)
        assert (conv.csat, conv.csat_weight) == (3, weight)  # and keep their first rating's weight
    assert store.redis.zcard(store.keys.rater_ratings(convs[0].rater)) == 2


def test_the_cap_window_slides(web):
    app, store = app_with(web, rating_client_cap=1, rating_client_window_s=1)
    first, _, _ = chat_and_rate(app, ADDRESS)
    second, _, _ = chat_and_rate(app, ADDRESS)
    time.sleep(1.1)
    third, _, _ = chat_and_rate(app, ADDRESS)
    assert [store.conversations.get(c).csat_weight for c in (first, second, third)] == [1.0, 0.0, 1.0]


def test_each_conversation_is_its_own_rater_when_configured(web):
    app, store = app_with(web, rating_client_cap=1, rater_identity="conversation")
    convs = [store.conversations.get(chat_and_rate(app, "127.0.0.1")[0]) for _ in range(3)]
    assert [(c.rater, c.csat_weight) for c in convs] == [("", 1.0)] * 3
    assert len({c.client_hash for c in convs}) == 1 and convs[0].client_hash  # provenance is still kept


def client_hash(app: Flask, store: FeedbackStore, address: str, **headers: str) -> str:
    return store.conversations.get(chat_and_rate(app, address, headers=headers)[0]).client_hash


def test_trusted_proxy_hops_name_the_client_and_an_ipv6_client_counts_by_its_64(web):
    proxied, proxied_store = app_with(web, trusted_proxies=1)
    behind = [client_hash(proxied, proxied_store, proxy, **{"X-Forwarded-For": "198.51.100.9"})
              for proxy in ("10.0.0.1", "10.0.0.2")]
    direct, direct_store = app_with(web)
    assert behind[0] == behind[1] == client_hash(direct, direct_store, "198.51.100.9")
    spoofed = [client_hash(direct, direct_store, "10.0.0.1", **{"X-Forwarded-For": f"198.51.100.{i}"}) for i in (9, 10)]
    assert spoofed[0] == spoofed[1] != behind[0]  # without a trusted proxy the header is ignored
    same_64 = {client_hash(direct, direct_store, a) for a in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::7")}
    assert len(same_64) == 1 and client_hash(direct, direct_store, "2001:db8:1:3::1") not in same_64
