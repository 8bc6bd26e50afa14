"""Records and chats the store tests build on."""

from __future__ import annotations

import os
import time

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
