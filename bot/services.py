"""What the web layer shares between requests: settings, the store, the model engine and the live
knowledge index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from feedback_store import FeedbackStore
from loopdesk.config import Settings

if TYPE_CHECKING:
    from bot.observability import Metrics
    from bot.runtime import Engine
    from bot.runtime.knowledge import LiveKnowledge

EXTENSION = "loopdesk"


@dataclass(frozen=True)
class Services:
    """Held in ``app.extensions['loopdesk']`` by the app factory."""

    settings: Settings
    store: FeedbackStore
    engine: "Engine"
    metrics: "Metrics"
    knowledge: "LiveKnowledge"


def services() -> Services:
    """The current app's services."""
    return current_app.extensions[EXTENSION]
