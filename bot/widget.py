"""The demo shop page that hosts the chat widget (the widget itself is ``static/widget.js``).

The widget's ``data-bot-url`` is ``LOOPDESK_PUBLIC_URL`` when set, else the app's own root as a
same-origin relative URL: the request's ``Host`` header never reaches the page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, render_template, request, url_for

from bot.services import services
from loopdesk.config import Settings, SettingsError

bp = Blueprint("widget", __name__)

DEFAULT_IDLE_S = 120


def init_app(app: Flask, settings: Settings) -> None:
    """Check ``public_url`` (an absolute http(s) URL without query or fragment) and add the page."""
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise SettingsError(f"LOOPDESK_PUBLIC_URL must be an http(s) URL such as https://help.example.com/, "
                                f"got {settings.public_url!r}")
    app.register_blueprint(bp)


@bp.get("/")
def demo_shop() -> str:
    """Northwind Outfitters, a fictional shop with the widget embedded by one script tag.

    ``?idle=<seconds>`` sets the widget's idle timeout (5 to 3600 s) to see its rating offer quickly.
    """
    idle = request.args.get("idle", DEFAULT_IDLE_S, type=int) or DEFAULT_IDLE_S
    bot_url = services().settings.public_url or url_for("widget.demo_shop")
    return render_template("demo_shop.html", idle_s=min(max(idle, 5), 3600), bot_url=bot_url)
