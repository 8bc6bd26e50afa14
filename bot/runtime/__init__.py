"""The model runtime: one generation worker per process, dynamic batching by adapter version,
adapter hot-swap with verification, following the registry (``follower``). The web layer uses
``make_engine`` (``Engine``, or ``VllmEngine`` with a vLLM server) and ``Generation``."""

from typing import TYPE_CHECKING

from bot.runtime.engine import Engine, Generation, GenerationError

if TYPE_CHECKING:
    from bot.runtime.vllm_backend import VllmEngine
    from feedback_store import FeedbackStore
    from loopdesk.config import Settings

__all__ = ["Engine", "Generation", "GenerationError", "make_engine"]


def make_engine(settings: "Settings", store: "FeedbackStore") -> "Engine | VllmEngine":
    """The engine the settings ask for: a vLLM server's (``vllm_url`` set) or the in-process model's."""
    if settings.vllm_url:
        from bot.runtime.vllm_backend import VllmEngine

        return VllmEngine(settings, store)
    return Engine(settings, store)
