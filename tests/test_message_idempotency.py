"""A message sent with an Idempotency-Key is logged and answered once, against the real engine (test-size
model) and real Redis: a retry gets the first reply, a key names one text, concurrent duplicates make one
turn pair, and a retry after a failed answer answers the customer turn already logged."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from bot.runtime import Engine
from feedback_store import FeedbackStore
from feedback_store.records import BotTurn
from tests.web_helpers import parse_sse, running_engine, started_app, web_settings

API = "/api/conversations"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, store, app): the model loads once for the whole module."""
    settings = web_settings(data_dir, base_model_dir)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, app


@pytest.fixture
def store(web) -> FeedbackStore:
    return web[1]


@pytest.fixture
def client(web) -> FlaskClient:
    return web[2].test_client()


def start(client: FlaskClient) -> tuple[str, dict[str, str]]:
    body = client.post(API).json
    return body["conversation_id"], {"Authorization": f"Bearer {body['token']}"}


def keyed(auth: dict[str, str], key: str, **more: str) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key, **more}


def roles(store: FeedbackStore, conv_id: str) -> list[str]:
    return [t.role for t in store.conversations.turns(conv_id)]


def test_a_retry_gets_the_first_reply_and_logs_one_turn_pair(client, store):
    conv_id, auth = start(client)
    key = str(uuid.uuid4())
    url = f"{API}/{conv_id}/messages"
    first = client.post(url, json={"text": "Where is my order?"}, headers=keyed(auth, key))
    again = client.post(url, json={"text": "Where is my order?"}, headers=keyed(auth, key))
    assert first.status_code == again.status_code == 200, again.json
    assert again.json == first.json and first.json["turn_index"] == 1
    streamed = parse_sse(client.post(url, json={"text": "Where is my order?"},
                                     headers=keyed(auth, key, Accept="text/event-stream")).response)
    assert streamed[-1] == ("done", first.json)
    assert "".join(d["text"] for e, d in streamed if e == "delta") == first.json["text"]
    assert roles(store, conv_id) == ["user", "assistant"]
    bot = store.conversations.turns(conv_id)[1]
    assert isinstance(bot, BotTurn) and bot.reply_to == 0
    assert client.post(url, json={"text": "Thanks"}, headers=keyed(auth, str(uuid.uuid4()))).json["turn_index"] == 3


def test_the_same_key_with_another_text_is_a_422_and_logs_nothing(client, store):
    conv_id, auth = start(client)
    url, key = f"{API}/{conv_id}/messages", "k-1"
    assert client.post(url, json={"text": "Do you ship abroad?"}, headers=keyed(auth, key)).status_code == 200
    refused = client.post(url, json={"text": "Do you ship to Mars?"}, headers=keyed(auth, key))
    assert refused.status_code == 422 and refused.json["error"]["code"] == "idempotency_key_reused"
    assert "another message" in refused.json["error"]["message"]
    assert roles(store, conv_id) == ["user", "assistant"]
    assert store.conversations.turns(conv_id)[0].text == "Do you ship abroad?"


def test_keys_belong_to_their_conversation(client, store):
    conv_id, auth = start(client)
    other_id, other_auth = start(client)
    for cid, a in ((conv_id, auth), (other_id, other_auth)):
        assert client.post(f"{API}/{cid}/messages", json={"text": "hi"}, headers=keyed(a, "same")).status_code == 200
    assert roles(store, conv_id) == roles(store, other_id) == ["user", "assistant"]


def test_concurrent_duplicates_make_one_turn_pair(web, store):
    app = web[2]
    conv_id, auth = start(app.test_client())
    key, n = str(uuid.uuid4()), 4
    barrier, answers = threading.Barrier(n), []

    def post() -> None:
        barrier.wait()
        response = app.test_client().post(f"{API}/{conv_id}/messages", json={"text": "How long does a refund take?"},
                                          headers=keyed(auth, key))
        answers.append((response.status_code, response.json))

    threads = [threading.Thread(target=post) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == n
    assert {status for status, _ in answers} <= {200, 409}
    replies = [body for status, body in answers if status == 200]
    assert replies and all(body == replies[0] for body in replies)
    assert all(body["error"]["code"] == "still_answering" for status, body in answers if status == 409)
    assert roles(store, conv_id) == ["user", "assistant"]
    late = app.test_client().post(f"{API}/{conv_id}/messages", json={"text": "How long does a refund take?"},
                                  headers=keyed(auth, key))
    assert late.json == replies[0]


def test_a_message_being_answered_elsewhere_is_a_409_until_its_lease_is_given_up(client, store):
    conv_id, auth = start(client)
    token = auth["Authorization"].split()[1]
    index, appended = store.conversations.append_customer_once(conv_id, token, "Can I change my address?", "k", 3600,
                                                               60.0)
    assert (index, appended) == (0, True)
    url, body = f"{API}/{conv_id}/messages", {"text": "Can I change my address?"}
    busy = client.post(url, json=body, headers=keyed(auth, "k"))
    assert busy.status_code == 409 and busy.json["error"]["code"] == "still_answering"
    store.conversations.release_answer(conv_id, "k")
    answered = client.post(url, json=body, headers=keyed(auth, "k"))
    assert answered.status_code == 200 and answered.json["turn_index"] == 1
    assert roles(store, conv_id) == ["user", "assistant"]


def test_after_a_failed_answer_a_retry_answers_the_turn_logged_the_first_time(web, client, store):
    settings = web[0]
    with started_app(settings, store, Engine(settings, store)) as stopped_app:
        stopped = stopped_app.test_client()
        conv_id, auth = start(client)
        url, body = f"{API}/{conv_id}/messages", {"text": "How do I reset my password?"}
        failed = stopped.post(url, json=body, headers=keyed(auth, "try"))
        assert failed.status_code == 503 and failed.json["error"]["code"] == "generation_failed"
        streamed = parse_sse(stopped.post(url, json=body, headers=keyed(auth, "try", Accept="text/event-stream")).response)
        assert [event for event, _ in streamed] == ["error"]
        assert roles(store, conv_id) == ["user"]
        retried = client.post(url, json=body, headers=keyed(auth, "try"))
        assert retried.status_code == 200 and retried.json["turn_index"] == 1, retried.json
        assert roles(store, conv_id) == ["user", "assistant"]
        assert store.conversations.turns(conv_id)[1].reply_to == 0


def test_a_retry_of_a_message_a_later_one_followed_is_a_409(web, client, store):
    with started_app(web[0], store, Engine(web[0], store)) as stopped_app:
        stopped = stopped_app.test_client()
        conv_id, auth = start(client)
        url = f"{API}/{conv_id}/messages"
        assert stopped.post(url, json={"text": "hello"}, headers=keyed(auth, "a")).status_code == 503
        assert client.post(url, json={"text": "anyone?"}, headers=keyed(auth, "b")).status_code == 200
        late = client.post(url, json={"text": "hello"}, headers=keyed(auth, "a"))
        assert late.status_code == 409 and late.json["error"]["code"] == "superseded"
        assert roles(store, conv_id) == ["user", "user", "assistant"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "é"])
def test_a_malformed_key_is_a_422(client, store, key):
    conv_id, auth = start(client)
    response = client.post(f"{API}/{conv_id}/messages", json={"text": "hi"}, headers=keyed(auth, key))
    assert response.status_code == 422 and "Idempotency-Key" in response.json["error"]["message"]
    assert roles(store, conv_id) == []


def test_erasing_a_conversation_erases_its_keys(client, store):
    conv_id, auth = start(client)
    client.post(f"{API}/{conv_id}/messages", json={"text": "hi"}, headers=keyed(auth, "k"))
    assert 0 < store.redis.ttl(store.keys.message_requests(conv_id)) <= 86400
    assert client.delete(f"{API}/{conv_id}", headers=auth).status_code == 204
    assert not store.redis.exists(store.keys.message_requests(conv_id))
