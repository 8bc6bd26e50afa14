"""``loopdesk serve``: the chat API, widget, consoles and demo shop with the model engine, on one port.

By default gunicorn serves it: one worker process (the model is held once per process, and one
generation worker batches every reply) with threads (gunicorn's ``gthread``): by default twice as many as
replies may be in flight (``max_queued_replies`` waiting and a full batch), so that ratings and refusals
find a free thread while every reply holds one. The worker's event loop answers ``GET /healthz`` itself,
before the threads (``bot.health_worker``; bench/README.md has the measurements).
``--workers N`` runs N such processes, each with its own engine; ``--dev`` runs Werkzeug's development
server in this process instead.
"""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes, each loading its own model engine")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0, 4096),
              help="request threads per worker (a streamed reply holds one); 0: twice "
                   "LOOPDESK_MAX_QUEUED_REPLIES + LOOPDESK_MAX_BATCH_SIZE")
@click.option("--dev", is_flag=True, help="Werkzeug's development server in this process instead of gunicorn")
def serve(host: str, port: int, workers: int, threads: int, dev: bool) -> None:
    """Serve the bot: demo shop at /, chat API under /api, consoles at /expert and /operator."""
    from loopdesk.cli_support import settings_or_exit

    from bot.observability import configure_json_logging

    settings = settings_or_exit()
    configure_json_logging()
    if dev:
        _serve_werkzeug(settings, host, port)
    else:
        _serve_gunicorn(settings, host, port, workers,
                        threads or 2 * (settings.max_queued_replies + settings.max_batch_size))


def _serve_werkzeug(settings, host: str, port: int) -> None:
    from werkzeug.serving import make_server

    from bot.app import create_app
    from bot.runtime import make_engine
    from feedback_store import FeedbackStore

    store = FeedbackStore.from_settings(settings)
    engine = make_engine(settings, store)
    engine.start()
    try:
        server = make_server(host, port, create_app(settings, engine, store), threaded=True)
        click.echo(f"loopdesk: Werkzeug's development server on http://{host}:{server.server_port}/ "
                   f"(API docs at /openapi.json); Ctrl+C stops")
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("loopdesk: stopping")
    finally:
        engine.stop()


def _serve_gunicorn(settings, host: str, port: int, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    from bot.headers import security_headers
    from bot.health_worker import HealthFirstWorker
    from feedback_store.connection import resolve_redis_url

    resolve_redis_url(settings)  # start (or find) the embedded Redis once, before the workers connect to it
    HealthFirstWorker.security_headers = security_headers(settings)  # the workers fork from this process

    class LoopdeskApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
                               "worker_class": "bot.health_worker.HealthFirstWorker", "timeout": 120,
                               "preload_app": False, "accesslog": None}.items():
                self.cfg.set(key, value)

        def load(self):
            from bot.app import create_app

            return create_app(settings)

    click.echo(f"loopdesk: gunicorn with {workers} worker{'s' if workers > 1 else ''} × {threads} threads "
               f"on http://{host}:{port}/ (API docs at /openapi.json)")
    LoopdeskApplication().run()
