"""The app factory: settings, store and engine in, a Flask app with the chat API, widget, help
centre, consoles and docs out.

``create_app()`` with no arguments is what a WSGI server runs: it loads settings from the
environment, connects the store and starts the model engine; the live knowledge index follows
the store from its first use. On the embedded Redis (no ``REDIS_URL``) the process supervises it:
killed, it is started again (``feedback_store.supervisor``).
"""

from __future__ import annotations

import atexit
import hashlib

from flask import Flask, request
from flask_limiter import Limiter

from bot import (admin, auth, chat, errors, expert, handoff, headers, help_centre, inbox, knowledge_console,
                 observability, openapi, operator, raters, sessions, validation, widget)
from bot.runtime.knowledge import LiveKnowledge
from bot.services import EXTENSION, Services
from feedback_store import FeedbackStore
from feedback_store.connection import resolve_redis_url
from feedback_store.keys import Keys
from feedback_store.supervisor import supervise_embedded_redis
from loopdesk.config import Settings, load_settings

def create_app(settings: Settings | None = None, engine=None, store: FeedbackStore | None = None,
               knowledge: LiveKnowledge | None = None) -> Flask:
    """Build the web app; an engine is created and started here when none is given, and a live
    knowledge index of ``store`` when ``knowledge`` is not (another store's may be given)."""
    settings = settings or load_settings()
    store = store or FeedbackStore.from_settings(settings)
    if engine is None:
        from bot.runtime import make_engine

        engine = make_engine(settings, store)
        engine.start()
        atexit.register(engine.stop)

    supervisor = None if settings.redis_url else supervise_embedded_redis(settings)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, JSON_SORT_KEYS=False)
    knowledge = knowledge or LiveKnowledge(store, settings)
    metrics = observability.Metrics(store, engine, lambda: supervisor.restarts if supervisor else 0)
    app.extensions[EXTENSION] = Services(settings=settings, store=store, engine=engine, metrics=metrics,
                                         knowledge=knowledge)
    observability.init_app(app)
    errors.init_app(app)
    validation.init_app(app)
    sessions.init_app(app, settings)
    raters.init_app(app, settings)
    auth.init_app(app, settings)
    widget.init_app(app, settings)
    for blueprint in (chat.bp, handoff.bp, help_centre.bp, openapi.bp, expert.bp, operator.bp, admin.bp,
                      knowledge_console.bp, inbox.bp):
        app.register_blueprint(blueprint)
    auth.limit_logins(app, _init_rate_limits(app, settings), settings)
    headers.init_app(app, settings)
    return app


def _init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """Per-client limits on the chat API and (apart) the help centre, and per-conversation limits on messages,
    counted in Redis under the hashed client address (``bot.raters``); a conversation's messages are counted
    per token, so posts with a wrong token never use up its holder's allowance."""
    limiter = Limiter(
        raters.client_key,
        app=app,
        storage_uri=resolve_redis_url(settings, announce=False),
        storage_options={"key_prefix": Keys(settings.key_prefix).rate_limits(),
                         "max_connections": settings.redis_pool_size},
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,  # Redis down: limits fail open and the request meets the store's 503
    )
    for customer_facing in (chat.bp, handoff.bp):
        limiter.shared_limit(lambda: settings.rate_limit_per_ip, scope="ip", exempt_when=_is_preflight)(customer_facing)
    limiter.shared_limit(lambda: settings.rate_limit_per_ip, scope="help", exempt_when=_is_preflight)(help_centre.bp)
    endpoint = "chat.post_message"
    app.view_functions[endpoint] = limiter.limit(
        lambda: settings.rate_limit_per_conversation,
        key_func=_conversation_key,
        exempt_when=_is_preflight,
        override_defaults=False,
    )(app.view_functions[endpoint])
    return limiter


def _conversation_key() -> str:
    """The per-conversation limit's key: the conversation and a hash of the token the request sends."""
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return f"conversation/{request.view_args['conv_id']}/{hashlib.sha256(token.encode()).hexdigest()[:32]}"


def _is_preflight() -> bool:
    return request.method == "OPTIONS"
