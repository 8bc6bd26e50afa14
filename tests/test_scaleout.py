"""Scale-out: two real ``loopdesk serve`` processes on one Redis both follow an adapter promotion, and
both retrieve an edited help article within 2 s."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from bench.bot_process import import_knowledge, loopdesk_serve, serve_env
from feedback_store import FeedbackStore
from loopdesk.config import load_settings
from tests.adapter_helpers import register_random_adapter

pytestmark = pytest.mark.slow


def start_conversation(url: str) -> dict:
    response = requests.post(url + "api/conversations", timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def pinned_to(url: str, version: str, timeout_s: float = 60.0) -> dict:
    """A new conversation on ``url`` pinned to ``version``, once the process has loaded it."""
    deadline = time.monotonic() + timeout_s
    while version not in requests.get(url + "readyz", timeout=30).json()["checks"]["adapters"]["loaded"]:
        assert time.monotonic() < deadline, f"{url} never loaded {version}"
        time.sleep(0.2)
    return start_conversation(url)


def test_two_bot_processes_pin_new_conversations_to_a_promoted_adapter(data_dir: Path, base_model_dir: Path):
    env = serve_env(str(base_model_dir), data_dir, max_reply_tokens=8)
    settings = load_settings({}, data_dir=data_dir, key_prefix=env["LOOPDESK_KEY_PREFIX"],
                             base_model=str(base_model_dir))
    store = FeedbackStore.from_settings(settings, announce=False)
    import_knowledge(env)
    with loopdesk_serve(env, dev=True) as werkzeug_bot, loopdesk_serve(env, threads=4) as gunicorn_bot:
        bots = (werkzeug_bot, gunicorn_bot)
        assert {start_conversation(url)["adapter_version"] for url in bots} == {"base"}

        version = register_random_adapter(store, base_model_dir, seed=3)
        store.adapters.promote(version)

        for url in bots:
            conv = pinned_to(url, version)
            assert conv["adapter_version"] == version
            reply = requests.post(f"{url}api/conversations/{conv['conversation_id']}/messages",
                                  json={"text": "How do I track my order?"},
                                  headers={"Authorization": f"Bearer {conv['token']}"}, timeout=30)
            assert reply.status_code == 200 and reply.json()["adapter_version"] == version
            logged = store.conversations.turns(conv["conversation_id"])[-1]
            assert (logged.role, logged.adapter_version) == ("assistant", version)
            assert len(logged.logprobs) == len(logged.reply_token_ids) > 0
            assert [(a.id, a.version) for a in logged.articles] == [("order-status", 1)]


def first_hit(url: str, query: str) -> tuple[str, int]:
    found = requests.get(url + "api/help/articles", params={"q": query}, timeout=30).json()["articles"]
    return found[0]["id"], found[0]["version"]


def test_two_bot_processes_retrieve_an_edited_article_within_two_seconds(data_dir: Path, base_model_dir: Path):
    env = serve_env(str(base_model_dir), data_dir, max_reply_tokens=8)
    settings = load_settings({}, data_dir=data_dir, key_prefix=env["LOOPDESK_KEY_PREFIX"],
                             base_model=str(base_model_dir))
    store = FeedbackStore.from_settings(settings, announce=False)
    import_knowledge(env)
    query = "when do I get my money back"
    with loopdesk_serve(env, dev=True) as werkzeug_bot, loopdesk_serve(env, threads=4) as gunicorn_bot:
        bots = (werkzeug_bot, gunicorn_bot)
        assert [first_hit(url, query) for url in bots] == [("refunds", 1)] * 2
        current = store.knowledge.get("refunds")
        store.knowledge.update("refunds", current.version, "test", body="Your money is back within 2 days.")
        edited = time.monotonic()
        waiting = set(bots)
        while waiting:
            waiting = {url for url in waiting if first_hit(url, query) != ("refunds", 2)}
            assert time.monotonic() - edited < 2.0, f"{sorted(waiting)} still retrieve version 1 after 2 s"
            time.sleep(0.05)
