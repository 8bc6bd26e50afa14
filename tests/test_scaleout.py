"""Scale-out: two real ``loopdesk serve`` processes on one Redis both follow an adapter promotion."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from bench.load import loopdesk_serve, serve_env
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
    with loopdesk_serve(env, workers=0) as werkzeug_bot, loopdesk_serve(env, workers=1, threads=4) as gunicorn_bot:
        bots = (werkzeug_bot, gunicorn_bot)
        assert {start_conversation(url)["adapter_version"] for url in bots} == {"base"}

        version = register_random_adapter(store, base_model_dir, seed=3)
        store.adapters.promote(version)

        for url in bots:
            conv = pinned_to(url, version)
            assert conv["adapter_version"] == version
            reply = requests.post(f"{url}api/conversations/{conv['conversation_id']}/messages",
                                  json={"text": "Where is my order?"},
                                  headers={"Authorization": f"Bearer {conv['token']}"}, timeout=30)
            assert reply.status_code == 200 and reply.json()["adapter_version"] == version
            logged = store.conversations.turns(conv["conversation_id"])[-1]
            assert (logged.role, logged.adapter_version) == ("assistant", version)
            assert len(logged.logprobs) == len(logged.reply_token_ids) > 0
