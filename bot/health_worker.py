"""The gunicorn worker ``loopdesk serve`` runs: gunicorn's ``gthread`` worker that answers ``GET /healthz``
itself, on its event loop, before a request reaches the thread pool.

Under overload every request thread is busy (a streamed reply holds one until it is sent) and the
threads that are not waiting take turns at the interpreter's lock; a health check queued behind them
in the pool waited seconds at twice the sustainable load while the app itself answered it in a
millisecond (bench/README.md). A check that waits that long gets a healthy, shedding bot restarted by
its orchestrator. So the event loop, which every connection passes through, looks at the first bytes
of each request (``MSG_PEEK``, nothing consumed): a complete ``GET /healthz`` without a body is read
and answered right there (200, ``{"status": "ok"}``, the same security headers as the app's), and the
connection is kept alive as gunicorn keeps it. Anything else, or a request whose bytes have not all
arrived, goes to the thread pool unchanged; a new connection with nothing sent yet waits on the event
loop (as gunicorn's own deferred connections do) instead of on a thread.

What this answer says: the worker process runs and its event loop turns (gunicorn's arbiter restarts a
worker whose loop stalls). It is not counted in ``/metrics`` and writes no access-log line; whether
the app, Redis and the model can serve is ``/readyz``'s question, which the app answers.
"""

from __future__ import annotations

import selectors
import socket
import time
from email.utils import formatdate
from functools import partial
from typing import ClassVar

from gunicorn.workers.gthread import ThreadWorker

HEALTH_REQUEST = b"GET /healthz "
MAX_HEAD_BYTES = 8192
BODY_HEADERS = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:")
HEALTH_BODY = b'{"status":"ok"}\n'  # as Flask's jsonify writes it


def health_response(extra_headers: dict[str, str], keep_alive: bool) -> bytes:
    """The bytes of the 200 answer to ``GET /healthz``."""
    headers = {"Date": formatdate(usegmt=True), "Content-Type": "application/json",
               "Content-Length": str(len(HEALTH_BODY)), "Cache-Control": "no-store",
               **extra_headers, "Connection": "keep-alive" if keep_alive else "close"}
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    return head.encode("latin-1") + HEALTH_BODY


def parse_health_request(peeked: bytes) -> tuple[int, bool] | None:
    """``(length of the request's head, keep alive?)`` when ``peeked`` starts with a whole bodiless
    ``GET /healthz`` request; None for anything else (the app answers it)."""
    if not peeked.startswith(HEALTH_REQUEST):
        return None
    end = peeked.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = peeked[:end + 2].lower()
    if any(marker in head for marker in BODY_HEADERS):
        return None
    request_line = head.split(b"\r\n", 1)[0]
    keep_alive = request_line.endswith(b"http/1.1") and b"\r\nconnection: close" not in head
    return end + 4, keep_alive


class HealthFirstWorker(ThreadWorker):
    """``gthread`` that answers ``GET /healthz`` on its event loop (module docstring)."""

    security_headers: ClassVar[dict[str, str]] = {}  # set by `loopdesk serve` before the workers fork

    def enqueue_req(self, conn) -> None:
        if self.cfg.is_ssl or (conn.parser is not None and conn.parser.unreader.buf.getvalue()):
            super().enqueue_req(conn)  # TLS bytes can't be peeked at; read-ahead bytes are the parser's
            return
        try:
            peeked = conn.sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if not conn.initialized and not conn.data_ready:
                self._wait_for_first_bytes(conn)
                return
            peeked = b""
        except OSError:
            peeked = b""
        found = parse_health_request(peeked) if peeked else None
        if found is None:
            super().enqueue_req(conn)
            return
        self._answer_health(conn, *found)

    def _wait_for_first_bytes(self, conn) -> None:
        """A new connection with nothing to read yet waits on the event loop, not on a thread."""
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def _answer_health(self, conn, head_bytes: int, keep_alive: bool) -> None:
        keep_alive = keep_alive and self.alive and self.cfg.keepalive > 0
        try:
            conn.sock.recv(head_bytes, socket.MSG_DONTWAIT)  # the bytes peeked at: all there
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(health_response(self.security_headers, keep_alive))
            conn.sock.settimeout(None)
        except OSError:
            keep_alive = False
        if not keep_alive:
            self.nr_conns -= 1
            conn.close()
            return
        conn.sock.setblocking(False)
        conn.set_timeout()
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
