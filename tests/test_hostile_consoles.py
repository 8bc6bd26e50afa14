"""Hostile input against the operators' and admins' consoles of a live bot (knowledge base, training and
adapters, accounts): schemathesis fuzzes every documented operation with ``EXAMPLES`` generated calls each,
plus its coverage cases, as a signed-in admin, so validation past the role checks is reached; no answer is
a server error. The customers', experts' and agents' operations: ``tests/test_hostile_input.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.hostile_helpers import (EXAMPLES, RUNNING_THE_BOT, LiveBot, assert_every_operation_called, call_fuzzed,
                                   live_bot, load_schema)


@pytest.fixture(scope="module")
def bot(data_dir: Path, base_model_dir: Path):
    with live_bot(data_dir, base_model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(bot: LiveBot):
    return load_schema(bot)


schema = schemathesis.pytest.from_fixture("api_schema").include(path_regex=RUNNING_THE_BOT)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_console_requests_never_get_a_server_error(case, bot: LiveBot):
    call_fuzzed(bot, case)


def test_every_console_operation_got_its_examples(api_schema, bot: LiveBot):
    """The fuzz test above called each of its operations at least ``EXAMPLES`` times."""
    assert_every_operation_called(bot, api_schema.include(path_regex=RUNNING_THE_BOT), EXAMPLES)
