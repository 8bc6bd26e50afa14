"""Who is asking: the client address as the app sees it, kept only as a keyed hash.

The address is ``request.remote_addr``: the TCP peer, or, with ``LOOPDESK_TRUSTED_PROXIES`` = n,
the address n hops back in ``X-Forwarded-For`` (werkzeug's ProxyFix, installed here). An IPv6
address counts by its /64 (what one subscriber is handed), an IPv4 address whole. The hash is
HMAC-SHA256 under ``LOOPDESK_CLIENT_HASH_KEY`` (or the key kept in ``data_dir/client_hash_key``),
its first 32 hex digits: the same client hashes alike on every replica sharing the key, and
neither the hashes in Redis nor the rate limiter's keys reveal the address. A rating's
provenance (``RatingSource``) is that hash, the user agent's, and the rater key the per-client
cap and the rating weights group by (``LOOPDESK_RATER_IDENTITY``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from flask import Flask, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix

from feedback_store.records import RatingSource
from loopdesk.config import Settings, kept_secret

EXTENSION = "loopdesk.client_hash_key"
IPV6_PREFIX = 64


def init_app(app: Flask, settings: Settings) -> None:
    """Keep the hash key; trust ``settings.trusted_proxies`` hops of ``X-Forwarded-For``."""
    app.extensions[EXTENSION] = kept_secret(settings, "client_hash_key").encode()
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0)


def client_address() -> str:
    """The request's client address, an IPv6 one reduced to its /64 network."""
    raw = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


def keyed_hash(kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` under the app's client hash key, 32 hex digits."""
    key = current_app.extensions[EXTENSION]
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


def client_key() -> str:
    """The hashed client address: the rate limiter's key and the rating's client."""
    return keyed_hash("address", client_address())


def rating_source(settings: Settings) -> RatingSource:
    """The provenance of a rating sent with this request."""
    client = client_key()
    agent = keyed_hash("agent", request.headers.get("User-Agent", ""))
    return RatingSource(client_hash=client, agent_hash=agent,
                        rater=client if settings.rater_identity == "address" else "")
