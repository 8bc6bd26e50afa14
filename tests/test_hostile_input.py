"""Hostile input against a live bot: schemathesis fuzzes every documented operation of the customers, the
help centre and the people who answer them (experts, agents) with ``EXAMPLES`` generated calls each, plus
its coverage cases, and no answer is a server error (only the 503s an operation documents are allowed).
The operators' and admins' consoles: ``tests/test_hostile_consoles.py``; linked calls:
``tests/test_hostile_stateful.py``. Script and HTML payloads in a transcript render inert in the expert
console: ``tests/test_console_browser.py``. Oversized bodies are refused before being read:
``tests/test_chat_api.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.hostile_helpers import (EXAMPLES, RUNNING_THE_BOT, WHOLE_REPLY, LiveBot, assert_every_operation_called,
                                   call_fuzzed, live_bot, load_schema, reproduce)
from tests.web_helpers import parse_sse

MESSAGES = "/api/conversations/{conv_id}/messages"
STREAMED = f"POST {MESSAGES} as server-sent events"


@pytest.fixture(scope="module")
def bot(data_dir: Path, base_model_dir: Path):
    with live_bot(data_dir, base_model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(bot: LiveBot):
    return load_schema(bot)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=RUNNING_THE_BOT)


@pytest.fixture(scope="module")
def streaming_schema(bot: LiveBot):
    return load_schema(bot, stream_events=WHOLE_REPLY)


streamed = schemathesis.pytest.from_fixture("streaming_schema").include(method="POST", path=MESSAGES)


def on_new_conversation(bot: LiveBot, case) -> None:
    """A customer's call on a conversation runs on a new real one, with its token."""
    if case.path.startswith("/api/conversations/"):
        conv, token = bot.store.conversations.start("base")
        case.path_parameters["conv_id"] = conv.id
        bot.tokens[conv.id] = token


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_server_error(case, bot: LiveBot):
    """Generated bodies, parameters and headers; customers' calls run on real conversations, experts' and
    agents' as a signed-in admin, so validation deep inside is reached too."""
    on_new_conversation(bot, case)
    call_fuzzed(bot, case)


@streamed.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_messages_stream_to_their_reply(case, bot: LiveBot):
    """Generated messages asked for as server-sent events, as the widget asks: read to its end, an answered
    message's stream is the reply's deltas and then the reply ('done'), never an 'error' event."""
    on_new_conversation(bot, case)
    case.headers = {**(case.headers or {}), "Accept": "text/event-stream"}
    response = call_fuzzed(bot, case)
    bot.calls[STREAMED] += 1
    if case.method.upper() == "POST" and response.status_code == 200:  # not the coverage phase's other methods
        events = [event for event, _ in parse_sse([response.content])]
        assert events[-1:] == ["done"] and set(events[:-1]) <= {"delta"}, f"{events}\n{reproduce(case, response)}"


def test_every_operation_got_its_examples(api_schema, bot: LiveBot):
    """The fuzz tests above called each of their operations at least ``EXAMPLES`` times."""
    assert_every_operation_called(bot, api_schema.exclude(path_regex=RUNNING_THE_BOT), EXAMPLES)
    assert bot.calls[STREAMED] >= EXAMPLES
