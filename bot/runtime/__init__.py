"""The model runtime: one generation worker per process, dynamic batching by adapter version,
adapter hot-swap with verification. The web layer uses ``Engine`` and ``Generation`` only."""

from bot.runtime.adapters import AdapterRefused, write_adapter
from bot.runtime.engine import Engine, Generation, GenerationError

__all__ = ["Engine", "Generation", "GenerationError", "AdapterRefused", "write_adapter"]
