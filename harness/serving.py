"""Serving a bot for the simulator in this process: any WSGI app on a free local port, or the real bot.

The simulator still talks to it over real HTTP, exactly as it talks to a remote ``--url``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from werkzeug.serving import WSGIRequestHandler, make_server

from loopdesk.config import Settings

SIMULATOR_RATE_LIMIT = "1000000/minute"


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request: a simulation makes thousands."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def serve(app: Callable[..., Any]) -> Iterator[str]:
    """Serve a WSGI ``app`` on 127.0.0.1 and a free port in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="sim-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def with_demo_knowledge(store: Any) -> None:
    """Import the demo shop's help articles when the knowledge base is empty (as ``scripts/run.sh`` does)."""
    from loopdesk.knowledge_files import read_articles
    from sim.knowledge import KNOWLEDGE_DIR

    if not store.knowledge.revision():
        store.knowledge.import_articles(read_articles(KNOWLEDGE_DIR))


@contextmanager
def bot_engine(settings: Settings) -> Iterator[tuple[Settings, Any, Any]]:
    """Start the real bot's store (with the demo shop's help articles if it has none) and engine in
    this process; yield (settings, store, engine).

    The yielded settings lift the per-IP and per-conversation rate limits and count each
    conversation as its own rater (no per-client rating cap, no shared rating weight): every
    simulated customer comes from 127.0.0.1, and the simulator is the only client of this instance.
    """
    from bot.runtime import Engine
    from feedback_store import FeedbackStore

    settings = settings.replace(rate_limit_per_ip=SIMULATOR_RATE_LIMIT,
                                rate_limit_per_conversation=SIMULATOR_RATE_LIMIT, rater_identity="conversation")
    store = FeedbackStore.from_settings(settings, announce=False)
    with_demo_knowledge(store)
    engine = Engine(settings, store)
    engine.start()
    try:
        yield settings, store, engine
    finally:
        engine.stop()


@contextmanager
def local_bot(settings: Settings) -> Iterator[str]:
    """Start the real bot (store, engine, app) in this process; yield its URL; stop it after."""
    from bot.app import create_app

    with bot_engine(settings) as (settings, store, engine), serve(create_app(settings, engine, store)) as url:
        yield url
