"""Shared pieces of the web tests: settings for the real test-size model, a started engine,
a reader for server-sent events (the tests serve the app with ``harness.serving.serve``), a metric read
from ``/metrics``, and a watch on the browser's Content-Security-Policy reports."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from feedback_store import FeedbackStore
from loopdesk.config import Settings, load_settings

GENEROUS_LIMIT = "100000/minute"
CSP_WATCH = """document.addEventListener('securitypolicyviolation', e => window.__loopdeskCspViolation(
  e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' on ' + e.documentURI));"""


def web_settings(data_dir: Path, base_model_dir: Path, **changes: Any) -> Settings:
    """Settings on the session's Redis, a key prefix of their own, and rate limits out of the way.

    ``kb_min_score`` is 0, so the model answers whatever the (empty) knowledge base retrieves: the
    chat mechanics are tested apart from grounding; the grounding tests pass the real threshold.
    """
    values: dict[str, Any] = dict(
        data_dir=data_dir, key_prefix=f"w{uuid.uuid4().hex[:12]}", base_model=str(base_model_dir),
        rate_limit_per_ip=GENEROUS_LIMIT, rate_limit_per_conversation=GENEROUS_LIMIT, kb_min_score=0.0,
    )
    values.update(changes)
    return load_settings({}, **values)


@contextmanager
def running_engine(settings: Settings, store: FeedbackStore, timeout_s: float = 120.0) -> Iterator[Any]:
    """The real model runtime, started and ready; stopped afterwards."""
    from bot.runtime import Engine

    engine = Engine(settings, store)
    engine.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not engine.ready():
            assert time.monotonic() < deadline, "the engine did not become ready"
            time.sleep(0.05)
        yield engine
    finally:
        engine.stop()


def watch_csp(context: Any, violations: list[str]) -> None:
    """Append every Content-Security-Policy violation a page of the Playwright ``context`` reports."""
    context.expose_function("__loopdeskCspViolation", lambda violation: violations.append(violation))
    context.add_init_script(CSP_WATCH)


def parse_sse(chunks: Iterable[bytes]) -> list[tuple[str, dict]]:
    """(event, data) pairs from a text/event-stream body (comment blocks, the ``: waiting`` heartbeats, left out)."""
    text = b"".join(chunks).decode()
    events = []
    for block in filter(None, text.split("\n\n")):
        if block.startswith(":"):
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def metric(app: Any, name: str, **labels: str) -> float:
    """The sum of the ``/metrics`` samples named ``name`` with these labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def sign_in_page(page: Any, url: str, path: str, name: str, password: str) -> None:
    """Sign ``name`` in on the console page ``path`` of the app at ``url`` through its login form."""
    page.goto(url.rstrip("/") + path)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path.split('?')[0]}*")
