"""Faults while serving: Redis killed with -9 and restarted under live chats loses no acknowledged
rating, answers the outage with JSON 503s (never a hang) and serves again afterwards.

The other faults have their own tests: a worker killed mid-run (test_jobs), corrupt or
wrong-base adapters (test_adapter_follower), read-only and full disks (test_release).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import requests

from feedback_store import FeedbackStore
from feedback_store.server import (
    embedded_redis_pid,
    ensure_embedded_redis,
    stop_embedded_redis,
)
from harness.serving import serve
from tests.store_helpers import wait_dead
from tests.web_helpers import running_engine, started_app, web_settings

N_CUSTOMERS = 4
CLIENT_TIMEOUT_S = 30.0


class Customers:
    """Threads that chat, end and rate over HTTP until stopped, recording what was acknowledged."""

    def __init__(self, url: str):
        self.url = url + "api/conversations"
        self.stop = threading.Event()
        self.acknowledged: dict[str, tuple[int, float]] = {}  # conversation -> (score, when)
        self.refusals: list[tuple[int, str]] = []  # (status, error code) of non-2xx answers
        self.hangs: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._chat, args=(i,)) for i in range(N_CUSTOMERS)]

    def __enter__(self) -> "Customers":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2 * CLIENT_TIMEOUT_S)

    def _call(self, session: requests.Session, path: str, **kwargs) -> requests.Response | None:
        try:
            response = session.post(self.url + path, timeout=CLIENT_TIMEOUT_S, **kwargs)
        except requests.Timeout:
            with self._lock:
                self.hangs.append(path)
            return None
        if response.status_code >= 300:
            with self._lock:
                self.refusals.append((response.status_code, response.json()["error"]["code"]))
            return None
        return response

    def _chat(self, seed: int) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            started = self._call(session, "")
            if started is None:
                continue
            conv, token = started.json()["conversation_id"], started.json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            score = 1 + (seed + n) % 5
            if (self._call(session, f"/{conv}/messages", json={"text": "Where is my order?"}, headers=auth)
                    and self._call(session, f"/{conv}/end", headers=auth)
                    and self._call(session, f"/{conv}/rating", json={"score": score}, headers=auth)):
                with self._lock:
                    self.acknowledged[conv] = (score, time.monotonic())


def test_redis_restarted_during_active_chats_loses_no_acknowledged_rating(tmp_path: Path, base_model_dir: Path):
    settings = web_settings(tmp_path, base_model_dir, max_reply_tokens=8)
    url_before = ensure_embedded_redis(tmp_path)
    store = FeedbackStore.from_settings(settings, announce=False)
    try:
        with running_engine(settings, store) as engine, started_app(settings, store, engine) as app, serve(app) as url:
            with Customers(url) as customers:
                time.sleep(2.0)
                pid = embedded_redis_pid(tmp_path)
                os.kill(pid, signal.SIGKILL)
                wait_dead(pid)
                time.sleep(1.0)  # an outage the clients' retries cannot hide
                assert ensure_embedded_redis(tmp_path) == url_before  # same port: clients reconnect
                restarted_at = time.monotonic()
                time.sleep(3.0)
            ready = requests.get(url + "readyz", timeout=CLIENT_TIMEOUT_S)
            assert ready.status_code == 200, ready.json()

        assert customers.hangs == []
        assert {status for status, _ in customers.refusals} <= {503}
        assert {code for _, code in customers.refusals} <= {"store_unavailable", "generation_failed"}
        after = [conv for conv, (_, when) in customers.acknowledged.items() if when > restarted_at]
        assert len(customers.acknowledged) > len(after) > 0, "ratings were acknowledged before and after"
        stored = {c.id: c.csat for c in store.conversations.many(list(customers.acknowledged))}
        assert stored == {conv: score for conv, (score, _) in customers.acknowledged.items()}
    finally:
        stop_embedded_redis(tmp_path)
