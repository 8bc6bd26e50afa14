"""Backpressure over real HTTP (a threaded server on a real socket, the real app, real Redis, the test-size
model with replies that run to their length, ``tests/slow_engines``): a full queue refuses before storing,
a client that hangs up mid-stream has its reply dropped, and a reply past its deadline is a clean 503."""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import requests

from feedback_store import FeedbackStore
from harness.serving import serve
from tests.slow_engines import LongReplyEngine, wait_for
from tests.web_helpers import started_app, web_settings

API = "api/conversations"


@contextmanager
def bot(data_dir: Path, base_model_dir: Path, **changes) -> Iterator[tuple[str, LongReplyEngine]]:
    settings = web_settings(data_dir, base_model_dir, max_reply_tokens=250, **changes)
    store = FeedbackStore.from_settings(settings, announce=False)
    engine = LongReplyEngine(settings, store)
    engine.start()
    try:
        with started_app(settings, store, engine) as app, serve(app) as url:
            yield url, engine
    finally:
        engine.stop()


def start(url: str) -> tuple[str, dict[str, str]]:
    body = requests.post(url + API, timeout=10).json()
    return body["conversation_id"], {"Authorization": f"Bearer {body['token']}"}


def turns(url: str, conv: str, auth: dict[str, str]) -> list[str]:
    return [t["role"] for t in requests.get(f"{url}{API}/{conv}", headers=auth, timeout=10).json()["turns"]]


class Stream:
    """One streamed message on a raw socket, so the test decides when the client hangs up."""

    def __init__(self, url: str, conv: str, auth: dict[str, str], text: str = "Where is my order?"):
        parts = urlsplit(url)
        body = json.dumps({"text": text}).encode()
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sock.sendall((f"POST /{API}/{conv}/messages HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                           f"Authorization: {auth['Authorization']}\r\nAccept: text/event-stream\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n").encode() + body)
        self.received = b""

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            chunk = self.sock.recv(4096)
            assert chunk, f"the stream ended before {marker!r}: {self.received[-300:]!r}"
            self.received += chunk
        return self.received

    def hang_up(self) -> None:
        self.sock.close()


def metric(url: str, line_start: str) -> float:
    for line in requests.get(url + "metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_message_beyond_the_queue_bound_gets_503_with_retry_after_and_nothing_is_stored(data_dir, base_model_dir):
    with bot(data_dir, base_model_dir, max_batch_size=1, max_queued_replies=2) as (url, engine):
        streams = [Stream(url, *start(url))]
        wait_for(lambda: engine.decoding() == 1, what="the first reply decoding")
        streams += [Stream(url, *start(url)) for _ in range(2)]
        wait_for(lambda: engine.admission.waiting() == 2, what="two replies waiting behind it")
        conv, auth = start(url)
        refused = requests.post(f"{url}{API}/{conv}/messages", json={"text": "Hello?"}, headers=auth, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert turns(url, conv, auth) == []  # refused before the customer's turn was stored
        assert metric(url, 'loopdesk_replies_unsent_total{reason="queue_full"}') == 1
        streams[1].read_until(b": waiting")  # a queued stream says it is waiting, which notices a client gone
        for stream in streams:
            stream.hang_up()
        wait_for(lambda: engine.decoding() == 0 and engine.admission.waiting() == 0, timeout_s=5,
                 what="every reply of a client gone dropped, queued ones too")
        accepted = Stream(url, conv, auth, "Hello again?")
        accepted.read_until(b"event: delta")
        accepted.hang_up()


def test_a_client_that_hangs_up_mid_stream_has_its_row_dropped_and_no_bot_turn_logged(data_dir, base_model_dir):
    with bot(data_dir, base_model_dir) as (url, engine):
        conv, auth = start(url)
        stream = Stream(url, conv, auth)
        stream.read_until(b"event: delta")
        assert engine.decoding() == 1
        stream.hang_up()
        took = wait_for(lambda: engine.decoding() == 0, timeout_s=2, what="the row leaving the batch")
        assert took < 1.0  # the whole reply would take 2.5 s
        assert turns(url, conv, auth) == ["user"]
        assert metric(url, 'loopdesk_replies_unsent_total{reason="client_gone"}') == 1


def test_a_reply_past_its_deadline_is_a_503_or_an_sse_error_and_is_not_logged(data_dir, base_model_dir):
    with bot(data_dir, base_model_dir, reply_deadline_s=0.5) as (url, engine):
        conv, auth = start(url)
        late = requests.post(f"{url}{API}/{conv}/messages", json={"text": "Hello?"}, headers=auth, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "reply_timeout"
        assert int(late.headers["Retry-After"]) >= 1
        stream = Stream(url, conv, auth)
        events = stream.read_until(b"event: error").decode()
        assert '"code":"reply_timeout"' in events.replace(" ", "") and "event: done" not in events
        stream.hang_up()
        assert turns(url, conv, auth) == ["user", "user"] and engine.decoding() == 0
        assert metric(url, 'loopdesk_replies_unsent_total{reason="deadline"}') == 2
