"""The bot supervises its embedded Redis: after a real ``kill -9`` of redis-server under a ``loopdesk serve``
(gunicorn) subprocess, the bot starts it again by itself on the same port, data directory and password,
serves again within seconds, answered the outage with 503s at worst, and every acknowledged rating is
still there. A server stopped on purpose stays stopped."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.bot_process import loopdesk_serve, serve_env
from feedback_store.server import (
    embedded_redis_died,
    embedded_redis_pid,
    ensure_embedded_redis,
    redis_dir,
    stop_embedded_redis,
)
from feedback_store.supervisor import EmbeddedRedisSupervisor
from tests.slow_engines import wait_for
from tests.store_helpers import wait_dead

pytestmark = pytest.mark.slow  # a loopdesk serve subprocess
API = "api/conversations"
TIMEOUT_S = 30.0
RECOVERY_S = 5.0


def chat_and_rate(url: str, score: int) -> tuple[str, dict[str, str]]:
    """One widget conversation: start, a message, end, a rating; raises on any non-2xx answer."""
    started = requests.post(url + API, timeout=TIMEOUT_S)
    started.raise_for_status()
    conv, auth = started.json()["conversation_id"], {"Authorization": f"Bearer {started.json()['token']}"}
    for path, body in (("messages", {"text": "Where is my order?"}), ("end", None), ("rating", {"score": score})):
        requests.post(f"{url}{API}/{conv}/{path}", json=body, headers=auth, timeout=TIMEOUT_S).raise_for_status()
    return conv, auth


class Customers:
    """A thread chatting and rating until stopped; keeps the acknowledged ratings and every refusal."""

    def __init__(self, url: str):
        self.url = url
        self.acknowledged: dict[str, tuple[dict[str, str], int]] = {}
        self.refusals: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                conv, auth = chat_and_rate(self.url, 1 + n % 5)
            except requests.HTTPError as exc:
                self.refusals.append((exc.response.status_code, exc.response.json()["error"]["code"]))
                continue
            self.acknowledged[conv] = (auth, 1 + n % 5)


def metric(url: str, name: str) -> float:
    line = next(line for line in requests.get(url + "metrics", timeout=TIMEOUT_S).text.splitlines()
                if line.startswith(name + " "))
    return float(line.split()[1])


def test_a_killed_embedded_redis_is_restarted_by_the_bot_and_no_acknowledged_rating_is_lost(
        tmp_path: Path, base_model_dir: Path):
    env = serve_env(str(base_model_dir), tmp_path, max_reply_tokens=8, kb_min_score=0)  # every message generates
    url_before = ensure_embedded_redis(tmp_path)
    port_file = redis_dir(tmp_path) / "redis.port"
    try:
        with loopdesk_serve(env) as url:
            customers = Customers(url)
            customers.thread.start()
            wait_for(lambda: len(customers.acknowledged) >= 3, timeout_s=60, what="ratings acknowledged")
            pid, port = embedded_redis_pid(tmp_path), port_file.read_text()
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid)
            while requests.get(url + "readyz", timeout=TIMEOUT_S).status_code != 200:
                assert time.monotonic() - killed_at < RECOVERY_S, "the bot did not restart its Redis in time"
                time.sleep(0.05)
            recovered = len(customers.acknowledged)
            wait_for(lambda: len(customers.acknowledged) >= recovered + 3, timeout_s=60, what="serving on")
            customers.stop.set()
            customers.thread.join(timeout=2 * TIMEOUT_S)
            assert metric(url, "loopdesk_redis_restarts_total") == 1
            for conv, (auth, score) in customers.acknowledged.items():
                transcript = requests.get(f"{url}{API}/{conv}", headers=auth, timeout=TIMEOUT_S).json()
                assert transcript["csat"] == score, conv
        assert embedded_redis_pid(tmp_path) != pid and port_file.read_text() == port
        assert ensure_embedded_redis(tmp_path) == url_before  # same port and password
        assert {status for status, _ in customers.refusals} <= {503}, customers.refusals
        assert {code for _, code in customers.refusals} <= {"store_unavailable", "generation_failed"}
    finally:
        stop_embedded_redis(tmp_path)


def test_a_redis_stopped_on_purpose_stays_stopped_and_a_killed_one_is_restarted(tmp_path: Path):
    ensure_embedded_redis(tmp_path)
    supervisor = EmbeddedRedisSupervisor(tmp_path)
    try:
        stop_embedded_redis(tmp_path)
        assert not embedded_redis_died(tmp_path) and not supervisor.check()
        url = ensure_embedded_redis(tmp_path)  # started again: supervised again
        pid = embedded_redis_pid(tmp_path)
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        assert embedded_redis_died(tmp_path) and supervisor.check()
        assert ensure_embedded_redis(tmp_path) == url and supervisor.restarts == 1
    finally:
        stop_embedded_redis(tmp_path)
