"""The demo shop page that hosts the chat widget (the widget itself is ``static/widget.js``)."""

from __future__ import annotations

from flask import Blueprint, render_template, request

bp = Blueprint("widget", __name__)

DEFAULT_IDLE_S = 120


@bp.get("/")
def demo_shop() -> str:
    """Northwind Outfitters, a fictional shop with the widget embedded by one script tag.

    ``?idle=<seconds>`` sets the widget's idle timeout (5 to 3600 s) to try the survey quickly.
    """
    idle = request.args.get("idle", DEFAULT_IDLE_S, type=int) or DEFAULT_IDLE_S
    return render_template("demo_shop.html", idle_s=min(max(idle, 5), 3600))
