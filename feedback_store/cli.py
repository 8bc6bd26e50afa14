"""``loopdesk redis …``: look after the embedded Redis server."""

from __future__ import annotations

import click


@click.group("redis")
def redis_group() -> None:
    """Start, inspect or stop the embedded Redis (ignored when REDIS_URL is set)."""


@redis_group.command("start")
def start() -> None:
    """Start the embedded server if it is not running, and print its URL (the password masked: it is kept
    in <data_dir>/redis/password)."""
    from loopdesk.cli_support import settings_or_exit
    from loopdesk.config import redacted_url
    from feedback_store.connection import resolve_redis_url

    click.echo(redacted_url(resolve_redis_url(settings_or_exit())))


@redis_group.command("status")
def status() -> None:
    """Say which Redis loopdesk uses and whether it answers."""
    from loopdesk.cli_support import settings_or_exit
    from feedback_store.store import FeedbackStore

    store = FeedbackStore.from_settings(settings_or_exit())
    info = store.redis.info("persistence")
    used, limit = store.memory()
    click.echo(f"ping ok; aof_enabled={info.get('aof_enabled')} "
               f"watermark={store.feedback.watermark()} active_adapter={store.adapters.active()} "
               f"used_memory={used} maxmemory={limit or 'none'}")


@redis_group.command("stop")
def stop() -> None:
    """Stop the embedded server (its data stays in the data directory)."""
    from loopdesk.cli_support import settings_or_exit
    from feedback_store.server import stop_embedded_redis

    settings = settings_or_exit()
    if settings.redis_url:
        raise click.UsageError("REDIS_URL is set: loopdesk does not manage that server")
    click.echo("stopped" if stop_embedded_redis(settings.data_dir) else "not running")
