"""``loopdesk serve``: the chat API, widget, consoles and demo shop with the model engine, on one port.

With ``--workers N`` (N ≥ 1) it runs gunicorn with N worker processes, each loading its own
engine after the fork and following adapter announcements; without it, one threaded werkzeug
server in this process.
"""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, 64),
              help="gunicorn worker processes (0: one in-process threaded server)")
@click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 256),
              help="request threads per gunicorn worker (streamed replies hold one each)")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the bot: demo shop at /, chat API under /api, consoles at /expert and /operator."""
    from loopdesk.cli_support import settings_or_exit

    from bot.observability import configure_json_logging

    settings = settings_or_exit()
    configure_json_logging()
    if workers:
        _serve_gunicorn(settings, host, port, workers, threads)
    else:
        _serve_werkzeug(settings, host, port)


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
        click.echo(f"loopdesk: serving the demo shop on http://{host}:{server.server_port}/ "
                   f"(API docs at /openapi.json); Ctrl+C stops")
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("loopdesk: stopping")
    finally:
        engine.stop()


def _serve_gunicorn(settings, host: str, port: int, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    from feedback_store.connection import resolve_redis_url

    # Start (or find) Redis once in the master, so the workers don't race to start it.
    redis_url = resolve_redis_url(settings)
    worker_settings = settings.replace(redis_url=redis_url)

    class LoopdeskApplication(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
                               "worker_class": "gthread", "timeout": 120, "preload_app": False,
                               "accesslog": None}.items():
                self.cfg.set(key, value)

        def load(self):
            from bot.app import create_app

            return create_app(worker_settings)

    click.echo(f"loopdesk: gunicorn with {workers} workers × {threads} threads on http://{host}:{port}/")
    LoopdeskApplication().run()
