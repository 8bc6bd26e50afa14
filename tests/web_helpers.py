"""Shared pieces of the web tests: settings for the real test-size model, a started engine, the app
built on them (``started_app``),
a reader for server-sent events (the tests serve the app with ``harness.serving.serve``), a metric read
from ``/metrics``, a watch on the browser's Content-Security-Policy reports, and a check that a page fits
its viewport's width."""

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


@contextmanager
def started_app(settings: Settings, store: FeedbackStore, engine: Any = None, **parts: Any) -> Iterator[Any]:
    """``create_app`` with ``engine`` (None: no model, for the consoles, the help centre and the knowledge
    API) and any other ``parts``; afterwards its live knowledge index, which follows Redis on a thread of
    its own, is stopped (left running it would log failed syncs once the test's Redis is gone)."""
    from bot.app import create_app
    from bot.services import EXTENSION

    app = create_app(settings, engine if engine is not None else object(), store=store, **parts)
    try:
        yield app
    finally:
        app.extensions[EXTENSION].knowledge.stop()


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


OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const contained = e => {  // inside a box that scrolls or clips sideways and itself fits: reachable there
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') { const r = a.getBoundingClientRect(); return r.left >= -0.5 && r.right <= width + 0.5; }
    }
    return false;
  };
  const out = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    return (r.width || r.height) && (r.right > width + 0.5 || r.left < -0.5) && !contained(e);
  });
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + [...e.classList].map(c => '.' + c).join('');
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          culprits: out.filter(e => !out.some(o => o !== e && e.contains(o))).map(e => {
            const r = e.getBoundingClientRect();
            return `${name(e)} "${(e.textContent || '').trim().slice(0, 40)}" spans ${Math.round(r.left)}..${Math.round(r.right)} px`;
          })};
}"""


def assert_no_sideways_scroll(page: Any, view: str) -> None:
    """The page at its viewport's width scrolls only up and down: no element pokes out left or right (one inside
    a box that scrolls sideways and fits counts as reachable); the message names the ones that do."""
    found = page.evaluate(OVERFLOWING)
    assert found["scrollWidth"] <= found["innerWidth"] and not found["culprits"], (
        f"{view} at {found['innerWidth']} px is {found['scrollWidth']} px wide; sticking out: "
        + "; ".join(found["culprits"][:12] or ["(no element found: a margin or a pseudo-element?)"]))
