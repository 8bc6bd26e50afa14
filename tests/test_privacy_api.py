"""Customers' data through the chat API (real engine, real Redis): PII is masked before the model sees
a message, the page URL is kept without its query, the JSON log is masked, and the token holder
erases a conversation with DELETE."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bot.app import create_app
from bot.observability import JsonFormatter
from feedback_store import FeedbackStore
from tests.store_helpers import keys_mentioning
from tests.web_helpers import running_engine, web_settings

API = "/api/conversations"
CARD, EMAIL, PHONE = "4111 1111 1111 1111", "jane.doe@example.com", "07700 900123"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(store, app, tokenizer): the model loads once for the module."""
    settings = web_settings(data_dir, base_model_dir)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine:
        yield store, create_app(settings, engine, store), AutoTokenizer.from_pretrained(base_model_dir)


def start(client, meta: dict | None = None) -> tuple[str, dict[str, str]]:
    response = client.post(API, json={"meta": meta or {}})
    assert response.status_code == 201, response.json
    return response.json["conversation_id"], {"Authorization": f"Bearer {response.json['token']}"}


def test_a_message_is_masked_before_the_model_sees_it(web):
    store, app, tokenizer = web
    client = app.test_client()
    conv_id, auth = start(client)
    text = f"My card is {CARD}, mail {EMAIL} or ring {PHONE}: where is order 48213 from 2024-01-15?"
    assert client.post(f"{API}/{conv_id}/messages", json={"text": text}, headers=auth).status_code == 200
    customer, bot = store.conversations.turns(conv_id)
    masked = "My card is [card], mail [email] or ring [phone]: where is order 48213 from 2024-01-15?"
    assert customer.text == masked and masked in bot.context
    seen = tokenizer.decode(bot.prompt_token_ids)
    assert not any(pii in seen or pii in bot.context for pii in (CARD, EMAIL, PHONE, "4111", "jane"))
    assert client.get(f"{API}/{conv_id}", headers=auth).json["turns"][0]["text"] == masked


def test_the_page_url_is_kept_without_query_or_fragment_and_meta_and_comments_are_masked(web):
    store, app, _ = web
    client = app.test_client()
    conv_id, auth = start(client, {"page": f"https://shop.example/account?email={EMAIL}&token=s3cret#orders",
                                   "campaign": f"call {PHONE}"})
    assert store.conversations.get(conv_id).meta == {"page": "https://shop.example/account",
                                                     "campaign": "call [phone]"}
    client.post(f"{API}/{conv_id}/messages", json={"text": "Where is my order?"}, headers=auth)
    rated = client.post(f"{API}/{conv_id}/rating", json={"score": 2, "comment": f"reply to {EMAIL}"}, headers=auth)
    assert rated.status_code == 200
    assert store.conversations.get(conv_id).csat_comment == "reply to [email]"
    assert keys_mentioning(store, EMAIL) == keys_mentioning(store, "s3cret") == set()


def test_the_customer_erases_their_conversation_with_delete(web):
    store, app, _ = web
    client = app.test_client()
    conv_id, auth = start(client, {"page": "https://shop.example/boots"})
    client.post(f"{API}/{conv_id}/messages", json={"text": "I want to return my boots, I'm Jane"}, headers=auth)
    client.post(f"{API}/{conv_id}/end", headers=auth)
    client.post(f"{API}/{conv_id}/rating", json={"score": 4, "comment": "quick"}, headers=auth)
    other_id, other_auth = start(client)

    assert client.delete(f"{API}/{conv_id}", headers=other_auth).status_code == 403
    assert client.delete(f"{API}/{conv_id}").status_code == 401
    erased = client.delete(f"{API}/{conv_id}", headers=auth)

    assert erased.status_code == 204 and erased.get_data() == b""
    counters = store.keys.rate_limits()  # the message rate limit's timestamps, gone after its one-minute window
    assert {k for k in keys_mentioning(store, conv_id) if not k.startswith(counters)} == {store.keys.erased()}
    assert keys_mentioning(store, "I'm Jane") == keys_mentioning(store, "quick") == set()
    assert client.get(f"{API}/{conv_id}", headers=auth).status_code == 404
    assert client.post(f"{API}/{conv_id}/messages", json={"text": "hello?"}, headers=auth).status_code == 404
    assert client.delete(f"{API}/{conv_id}", headers=auth).status_code == 204  # idempotent
    assert client.delete(f"{API}/{conv_id}", headers=other_auth).status_code == 403
    assert client.delete(f"{API}/{'f' * 32}", headers=auth).status_code == 404
    assert client.get(f"{API}/{other_id}", headers=other_auth).status_code == 200


def test_delete_is_documented_and_open_to_the_widgets_origins(web):
    _, app, _ = web
    client = app.test_client()
    operation = client.get("/openapi.json").json["paths"][f"{API}/{{conv_id}}"]["delete"]
    assert set(operation["responses"]) == {"204", "401", "403", "404", "429"}
    assert operation["security"] == [{"customerToken": []}]
    preflight = client.options(f"{API}/abc", headers={"Origin": "https://shop.example",
                                                      "Access-Control-Request-Method": "DELETE"})
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    help_api = client.get("/api/help/articles", headers={"Origin": "https://shop.example"})
    assert "DELETE" not in help_api.headers["Access-Control-Allow-Methods"]


def test_json_log_lines_are_masked(web, caplog):
    _, app, _ = web
    with caplog.at_level(logging.INFO, logger="bot.access"):
        app.test_client().get(f"/api/help/articles/{EMAIL}").close()
    line = next(json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "bot.access")
    assert line["path"] == "/api/help/articles/[email]" and line["status"] == 404
    try:
        raise ValueError(f"bad card {CARD}")
    except ValueError:
        record = logging.LogRecord("bot.chat", logging.ERROR, __file__, 1, "for %s", (EMAIL,), sys.exc_info())
    formatted = JsonFormatter().format(record)
    assert "4111" not in formatted and EMAIL not in formatted
    assert json.loads(formatted)["message"] == "for [email]" and "[card]" in json.loads(formatted)["exception"]

