"""Shared pieces of the schemathesis tests: the live bot they fuzz (real Redis, the test-size real model, real
HTTP), the schemathesis configuration, who each call runs as, and the curl command that reproduces a call.
"""

from __future__ import annotations

import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import requests
import schemathesis
import schemathesis.specs.openapi.schemas  # noqa: F401  loaded at collection, before any app thread runs

# (schemathesis imports its OpenAPI loader lazily; on CPython 3.11.7 see tests/conftest.py on ast.parse)
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from feedback_store import FeedbackStore
from harness.serving import serve, with_demo_knowledge
from loopdesk.config import Settings
from tests.console_helpers import PASSWORD, add_accounts
from tests.web_helpers import GENEROUS_LIMIT, running_engine, started_app, web_settings

CONSOLE_API = r"^/api/(expert|operator|admin|kb|inbox)/"
"""The paths of the consoles' API (signed-in accounts); the rest is the customers' and the public's."""
RUNNING_THE_BOT = r"^/api/(operator|admin|kb)/"
"""The operators' and admins' consoles (``tests/test_hostile_consoles.py``); the customers' operations and
the consoles of the people who answer them, experts and agents, are fuzzed in ``tests/test_hostile_input.py``
(the two take about as long)."""
SIGN_IN_OUT = ("/api/expert/login", "/api/expert/logout")
"""Called without the admin's session: signing out would end it for every later call."""
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
"""The checks of an answer beyond it being no server error: it is what the document says it may be."""
SEED = 20240611
EXAMPLES = 200
"""Generated calls per operation in the stateless tests (the coverage phase adds its own)."""

WHOLE_REPLY = 20
"""Events enough to read a streamed reply to its end: at most 8 deltas (the live bot's replies have at most
8 tokens), then its 'done'."""


def schemathesis_config(stream_events: int = 1) -> SchemathesisConfig:
    """The schemathesis configuration: ``SEED``, and ``stream_events`` read of an event stream before hanging up.

    A live stream of a conversation still open runs for minutes, so by default only its first event is read
    (the status comes at once), as from a widget that goes away; a streamed reply takes ``WHOLE_REPLY``. (Set
    for the whole project: an [[operations]] entry would make schemathesis 4.32 ignore ``include`` filters.)
    """
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        "request-timeout": 30,
        "max-stream-events": stream_events,
        # Only the links the document states, so the stateful tests follow what the API promises
        "phases": {"stateful": {"inference": {"algorithms": []}}},
        # A failure's curl command keeps the token, session cookie and CSRF header of the throw-away test
        # accounts, so it sends the call again as it was sent
        "output": {"sanitization": {"enabled": False}},
    })


@dataclass
class LiveBot:
    """The app served over HTTP, its store, an admin's signed-in session, and what the fuzzers did."""

    url: str
    settings: Settings
    store: FeedbackStore
    admin: requests.Session
    tokens: dict[str, str] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)

    def call_kwargs(self, case: Any) -> dict[str, Any]:
        """Who the call runs as: the customer's token on a conversation the fuzzer started, the admin's
        session on the consoles' API (but signing in and out), nobody elsewhere."""
        conv_id = case.path_parameters.get("conv_id") if case.path_parameters else None
        if case.path.startswith("/api/conversations/") and conv_id in self.tokens:
            return {"headers": {"Authorization": f"Bearer {self.tokens[conv_id]}"}}
        if re.match(CONSOLE_API, case.path) and case.path not in SIGN_IN_OUT:
            return {"session": self.admin}
        return {}

    def remember(self, case: Any, response: Any) -> None:
        """Count the call; keep the token of a conversation it started."""
        self.calls[case.operation.label] += 1
        if case.path == "/api/conversations" and case.method.upper() == "POST" and response.status_code == 201:
            started = response.json()
            self.tokens[started["conversation_id"]] = started["token"]


@contextmanager
def live_bot(data_dir: Path, base_model_dir: Path) -> Iterator[LiveBot]:
    """The real app on a live HTTP server (replies of at most 8 tokens), with console accounts, an admin's
    signed-in session, the demo shop's help articles and a retraining schedule, so the lists the consoles
    show have something in them."""
    config = web_settings(data_dir, base_model_dir, max_reply_tokens=8, rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(config, announce=False)
    add_accounts(store)
    with_demo_knowledge(store)
    store.schedules.add("0 3 * * *")
    with running_engine(config, store) as engine, started_app(config, store, engine) as app, serve(app) as url:
        admin = requests.Session()
        signed_in = admin.post(url + "api/expert/login", json={"name": "ada", "password": PASSWORD}, timeout=30)
        admin.headers["X-CSRF-Token"] = signed_in.json()["csrf_token"]
        yield LiveBot(url=url, settings=config, store=store, admin=admin)


def load_schema(bot: LiveBot, stream_events: int = 1) -> Any:
    """The bot's own /openapi.json, with ``schemathesis_config(stream_events)``."""
    return schemathesis.openapi.from_url(bot.url + "openapi.json", config=schemathesis_config(stream_events))


def reproduce(case: Any, response: Any) -> str:
    """The curl command that sends this call again, as it was sent."""
    return case.as_curl_command(headers=dict(response.request.headers))


def call_fuzzed(bot: LiveBot, case: Any) -> Any:
    """Send one generated call as ``bot.call_kwargs`` says; its answer is no server error (but a 503 the
    operation documents, such as a full generation queue), a refusal is the API's JSON error, and the
    answer's status, content type and body are the ones documented."""
    response = case.call(timeout=30, **bot.call_kwargs(case))
    bot.remember(case, response)
    status = response.status_code
    documented = {int(s) for s in case.operation.definition.raw["responses"] if s.isdigit()}
    answer = (f"{case.method} {case.formatted_path}: {status} {response.text[:300]}\n"
              f"Reproduce with: {reproduce(case, response)}")
    assert status < 500 or (status == 503 and 503 in documented), answer
    if status >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
        assert set(response.json()) == {"error"}, answer
    case.validate_response(response, checks=CONFORMANCE)
    return response


def assert_every_operation_called(bot: LiveBot, schema: Any, least: int) -> None:
    """Each operation of ``schema`` was called at least ``least`` times by the fuzz test before."""
    labels = {result.ok().label for result in schema.get_all_operations()}
    short = {label: bot.calls[label] for label in labels if bot.calls[label] < least}
    assert labels and not short, f"called fewer than {least} times (run the whole module): {short}"
