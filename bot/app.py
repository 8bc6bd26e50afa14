"""The app factory: settings, store and engine in, a Flask app with the chat API, widget, help
centre, consoles and docs out.

``create_app()`` with no arguments is what a WSGI server runs: it loads settings from the
environment, connects the store and starts the model engine; the live knowledge index follows
the store from its first use.
"""

from __future__ import annotations

import atexit

from flask import Flask, Response, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from bot import auth, chat, errors, expert, help_centre, knowledge_console, observability, openapi, operator, widget
from bot.runtime.knowledge import LiveKnowledge
from bot.services import EXTENSION, Services
from feedback_store import FeedbackStore
from feedback_store.connection import resolve_redis_url
from feedback_store.keys import Keys
from loopdesk.config import Settings, load_settings

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept",
    "Access-Control-Max-Age": "600",
}


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

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, JSON_SORT_KEYS=False)
    knowledge = knowledge or LiveKnowledge(store, settings)
    app.extensions[EXTENSION] = Services(settings=settings, store=store, engine=engine,
                                         metrics=observability.Metrics(store, engine), knowledge=knowledge)
    observability.init_app(app)
    errors.init_app(app)
    auth.init_app(app, settings)
    for blueprint in (chat.bp, widget.bp, help_centre.bp, openapi.bp, expert.bp, operator.bp, knowledge_console.bp):
        app.register_blueprint(blueprint)
    auth.limit_logins(app, _init_rate_limits(app, settings), settings)
    _init_cors(app, settings)
    return app


def _init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """Per-IP limits on the chat API and per-conversation limits on messages, counted in Redis."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=resolve_redis_url(settings, announce=False),
        storage_options={"key_prefix": Keys(settings.key_prefix).rate_limits(),
                         "max_connections": settings.redis_pool_size},
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,  # Redis down: limits fail open and the request meets the store's 503
    )
    limiter.shared_limit(lambda: settings.rate_limit_per_ip, scope="ip", exempt_when=_is_preflight)(chat.bp)
    limiter.shared_limit(lambda: settings.rate_limit_per_ip, scope="help", exempt_when=_is_preflight)(help_centre.bp)
    endpoint = "chat.post_message"
    app.view_functions[endpoint] = limiter.limit(
        lambda: settings.rate_limit_per_conversation,
        key_func=lambda: f"conversation/{request.view_args['conv_id']}",
        exempt_when=_is_preflight,
        override_defaults=False,
    )(app.view_functions[endpoint])
    return limiter


def _is_preflight() -> bool:
    return request.method == "OPTIONS"


def _init_cors(app: Flask, settings: Settings) -> None:
    """Let the widget call the API from the shop's own origin (bearer tokens, no cookies)."""
    allowed = {o.strip() for o in settings.cors_origins.split(",") if o.strip()}

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not request.path.startswith("/api/") or not origin:
            return response
        if "*" in allowed:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            return response
        response.headers.update(CORS_HEADERS)
        return response
