"""Acknowledged ratings survive kill -9 of the embedded Redis (AOF with appendfsync always)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from feedback_store import FeedbackStore
from feedback_store.server import embedded_redis_pid, ensure_embedded_redis, stop_embedded_redis
from loopdesk.config import load_settings
from tests.store_helpers import chat, wait_dead

N_RATINGS = 300


def test_rating_survives_redis_kill9(tmp_path):
    settings = load_settings({}, data_dir=tmp_path)
    store = FeedbackStore.from_settings(settings, announce=False)
    rated = {}
    for i in range(N_RATINGS):
        conv, token = chat(store)
        store.ratings.rate(conv.id, token, 1 + i % 5, f"comment {i}")
        rated[conv.id] = 1 + i % 5
    pid = embedded_redis_pid(tmp_path)
    os.kill(pid, signal.SIGKILL)  # no chance to flush anything on the way out
    wait_dead(pid)

    url = ensure_embedded_redis(tmp_path)
    assert embedded_redis_pid(tmp_path) != pid
    restarted = FeedbackStore.from_settings(settings.replace(redis_url=url), announce=False)
    found = {c.id: c.csat for c in restarted.conversations.many(list(rated))}
    assert found == rated
    assert restarted.feedback.watermark() == N_RATINGS
    stop_embedded_redis(tmp_path)


def test_second_process_reuses_the_running_embedded_server(tmp_path):
    first = ensure_embedded_redis(tmp_path)
    pid = embedded_redis_pid(tmp_path)
    code = f"from feedback_store.server import ensure_embedded_redis; print(ensure_embedded_redis({str(tmp_path)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == first and embedded_redis_pid(tmp_path) == pid
    stop_embedded_redis(tmp_path)
