"""Security headers on every response, and CORS for the customer-facing parts only.

Every page's scripts and styles are files under ``/static`` (no inline code), so the policy
admits only this origin's own; nothing may frame a loopdesk page (the widget is added to a shop
by a ``<script>`` tag, never a frame). Other origins may call the chat API
(``/api/conversations...``, bearer tokens, no cookies) and the help centre's API
(``/api/help...``, public and read-only) and fetch the widget's files; the consoles, the login
and every other route answer no CORS at all.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, request

from loopdesk.config import Settings

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept, Idempotency-Key",
    "Access-Control-Max-Age": "600",
}
CHAT_API = "/api/conversations"
CHAT_API_METHODS = "GET, POST, DELETE, OPTIONS"  # a customer may erase their conversation
HELP_API = "/api/help"
WIDGET_FILES = ("/static/widget.js", "/static/widget.css")


def security_headers(settings: Settings) -> dict[str, str]:
    """The headers every response gets; the widget may also call ``LOOPDESK_PUBLIC_URL``'s origin."""
    connect = "connect-src 'self'"
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        connect += f" {parts.scheme}://{parts.netloc}"
    policy = ("default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'", connect,
              "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'")
    return {
        "Content-Security-Policy": "; ".join(policy),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


def init_app(app: Flask, settings: Settings) -> None:
    """Add the security headers to every response and CORS headers where other origins may call."""
    allowed = {o.strip() for o in settings.cors_origins.split(",") if o.strip()}
    headers = security_headers(settings)

    @app.after_request
    def add_headers(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        if not _cross_origin_allowed(request.path):
            return response
        origin = request.headers.get("Origin")
        cors = CORS_HEADERS | ({"Access-Control-Allow-Methods": CHAT_API_METHODS}
                               if request.path.startswith(CHAT_API) else {})
        if "*" in allowed:
            if origin:
                response.headers.update({"Access-Control-Allow-Origin": "*", **cors})
            return response
        response.vary.add("Origin")
        if origin in allowed:
            response.headers.update({"Access-Control-Allow-Origin": origin, **cors})
        return response


def _cross_origin_allowed(path: str) -> bool:
    """The chat API, the help centre's API and the widget's own files; nothing else (consoles, login,
    docs, metrics)."""
    return any(path == api or path.startswith(api + "/") for api in (CHAT_API, HELP_API)) or path in WIDGET_FILES
