"""Records and chats the store tests build on."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from feedback_store.records import BotTurn


def bot_turn(text: str = "Your order ships in 2 days.", version: str = "base") -> BotTurn:
    return BotTurn(index=0, text=text, context="<ctx>", prompt_token_ids=[1, 2, 3],
                   reply_token_ids=[4, 5], logprobs=[-0.1, -2.0], adapter_version=version,
                   latency_ms=12.5, finished=True, created_at=time.time())


def chat(store, version: str = "base", turns: int = 1):
    conv, token = store.conversations.start(version)
    for i in range(turns):
        store.conversations.append_customer(conv.id, token, f"question {i}")
        store.conversations.append_bot(conv.id, bot_turn(version=version))
    return conv, token


def wait_dead(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"redis-server {pid} still alive after SIGKILL")


def key_contents(store) -> dict[str, str]:
    """Every key under the store's prefix → its name and content in one string (members, fields, values)."""
    r, contents = store.redis, {}
    for key in r.scan_iter(match=f"{store.keys.prefix}:*", count=1000):
        kind = r.type(key)
        if kind == "hash":
            parts = [f"{f}={v}" for f, v in r.hgetall(key).items()]
        elif kind == "list":
            parts = r.lrange(key, 0, -1)
        elif kind == "set":
            parts = r.smembers(key)
        elif kind == "zset":
            parts = r.zrange(key, 0, -1)
        elif kind == "stream":
            parts = [str(entry) for entry in r.xrange(key)]
        else:
            parts = [str(r.get(key))]
        contents[key] = "\n".join([key, *parts])
    return contents


def keys_mentioning(store, text: str, contents: dict[str, str] | None = None) -> set[str]:
    """The keys under the store's prefix whose name or content holds ``text``."""
    return {key for key, content in (contents or key_contents(store)).items() if text in content}


def consume_feedback(store, adapter_version: str | None = None):
    """A training run that consumed all feedback so far (as a round records it); returns it."""
    run = store.runs.create({}, trigger="test")
    store.runs.start(run.id, store.runs.training_watermark())
    return store.runs.finish(run.id, "succeeded", adapter_version=adapter_version,
                             watermark_to=store.feedback.watermark())


@contextmanager
def started_days_ago(monkeypatch, days: float):
    """Whatever is written inside happens ``days`` ago, as far as its timestamps go."""
    real = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real() - days * 86400)
        yield
