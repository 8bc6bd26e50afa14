"""The start every in-process engine benchmark shares (``serving.py``, ``prefix_reuse.py``): the model
directory, a fresh embedded Redis in a temporary data directory, settings on it and a store."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def bench_store(model: Path | None, **overrides: Any) -> Iterator[tuple[Path, Any, Any]]:
    """``(model directory, settings, store)``: ``model``, or the settings' base model (a default-size tiny
    model is bootstrapped there when it is missing); settings with ``overrides`` (None values left out)
    on an embedded Redis of a temporary data directory, which stops afterwards."""
    from feedback_store import FeedbackStore
    from feedback_store.server import ensure_embedded_redis, stop_embedded_redis
    from loopdesk.config import load_settings

    model_dir = model or Path(load_settings().base_model_ref)
    if not (model_dir / "config.json").exists():
        from sim.bootstrap import build_base_model

        print(f"no model in {model_dir}: bootstrapping the default tiny model (several minutes)")
        build_base_model(model_dir, size="default")
    data_dir = Path(tempfile.mkdtemp(prefix="loopdesk-bench-"))
    ensure_embedded_redis(data_dir)
    try:
        settings = load_settings(data_dir=data_dir, base_model=str(model_dir), key_prefix="bench",
                                 **{name: value for name, value in overrides.items() if value is not None})
        yield model_dir, settings, FeedbackStore.from_settings(settings, announce=False)
    finally:
        stop_embedded_redis(data_dir)
