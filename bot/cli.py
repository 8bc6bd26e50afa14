"""``loopdesk serve``: the chat API, widget and demo shop with the model engine, on one port."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port")
def serve(host: str, port: int) -> None:
    """Serve the bot (threaded werkzeug server; use gunicorn 'bot.app:create_app()' for replicas)."""
    from werkzeug.serving import make_server

    from bot.app import create_app
    from bot.runtime import Engine
    from feedback_store import FeedbackStore
    from loopdesk.cli import settings_or_exit

    settings = settings_or_exit()
    store = FeedbackStore.from_settings(settings)
    engine = Engine(settings, store)
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
