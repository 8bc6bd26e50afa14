"""``/healthz`` is answered by the gunicorn worker's event loop (``bot.health_worker``): at once even while
every request thread is taken, with the app's security headers, on a connection kept alive for the
requests after it; anything else still goes to the app."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from bench.bot_process import loopdesk_serve, serve_env
from bot.health_worker import parse_health_request

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("peeked", "expected"), [
    (HEAD, (len(HEAD), True)),
    (HEAD + b"GET /readyz HTTP/1.1\r\n\r\n", (len(HEAD), True)),  # pipelined: only the first is consumed
    (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", (44, False)),
    (b"GET /healthz HTTP/1.0\r\n\r\n", (25, False)),
    (b"GET /healthz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", None),  # a body: the app reads it
    (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", None),  # not all there yet
    (b"GET /healthz?verbose=1 HTTP/1.1\r\n\r\n", None),
    (b"GET /healthzz HTTP/1.1\r\n\r\n", None),
    (b"POST /healthz HTTP/1.1\r\n\r\n", None),
    (b"get /healthz HTTP/1.1\r\n\r\n", None),
])
def test_only_a_whole_bodiless_get_of_healthz_is_answered_by_the_event_loop(peeked, expected):
    assert parse_health_request(peeked) == expected


def _hold_a_thread(host: str, port: int) -> socket.socket:
    """A request whose body never comes: the app's thread waits reading it."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(b"POST /api/conversations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"page")
    return sock


def _raw_exchange(sock: socket.socket, request: bytes, answers: int) -> bytes:
    """Send ``request``; what came back once ``answers`` health answers did (or 5 s passed)."""
    sock.sendall(request)
    received, deadline = b"", time.monotonic() + 5
    while received.count(b'{"status":"ok"}') < answers and time.monotonic() < deadline:
        received += sock.recv(65536)
    return received


@pytest.mark.slow  # a loopdesk serve subprocess
def test_healthz_answers_while_every_request_thread_is_taken(data_dir: Path, base_model_dir: Path):
    with loopdesk_serve(serve_env(str(base_model_dir), data_dir), threads=2) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with requests.Session() as http:
            health = http.get(url + "healthz", timeout=5)
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert health.headers["X-Content-Type-Options"] == "nosniff"
            assert "frame-ancestors 'none'" in health.headers["Content-Security-Policy"]
            assert http.get(url + "readyz", timeout=5).status_code == 200  # the same kept-alive connection

        with socket.create_connection((host, port), timeout=5) as sock:  # pipelined, and sent in pieces
            sock.sendall(b"GET /heal")
            time.sleep(0.3)
            answer = _raw_exchange(sock, b"thz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 2)
            assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2 and answer.count(b'{"status":"ok"}') == 2

        with ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(_hold_a_thread(host, port))
            time.sleep(0.5)
            with pytest.raises(requests.Timeout):  # the app's threads are all taken ...
                requests.get(url + "readyz", timeout=1.5)
            for _ in range(5):  # ... and the event loop answers anyway
                sent = time.monotonic()
                health = requests.get(url + "healthz", timeout=1.0)
                assert health.json() == {"status": "ok"} and "X-Request-ID" not in health.headers  # not the app's
                assert time.monotonic() - sent < 0.5
        assert requests.get(url + "readyz", timeout=10).status_code == 200  # threads free again
