"""The overload benchmark's core at tiny size, over real HTTP against a ``loopdesk serve`` (gunicorn)
subprocess with the test-size model: at twice the sustainable load every customer is answered or cleanly
refused (503 with ``Retry-After``), none gets an error or waits forever, and ``/healthz`` stays fast.

The full benchmark is ``python bench/load.py`` (figures in bench/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bot_process import import_knowledge, loopdesk_serve, serve_env
from bench.load import open_loop, percentile, sustainable

pytestmark = pytest.mark.slow  # a loopdesk serve subprocess: its start takes longer than the load

CLIENT_TIMEOUT_S = 30.0


def test_twice_the_sustainable_load_is_answered_or_cleanly_refused_and_healthz_stays_fast(
        data_dir: Path, base_model_dir: Path):
    env = serve_env(str(base_model_dir), data_dir, max_queued_replies=4, reply_deadline_s=10)
    import_knowledge(env)  # the questions are the shop's: each is answered from its help article
    with loopdesk_serve(env) as url:
        rate, levels = sustainable(url, seconds=1.0, reply_target_s=2.0, timeout_s=CLIENT_TIMEOUT_S, max_customers=4)
        run = open_loop(url, 2 * rate, seconds=3.0, max_requests=400, timeout_s=CLIENT_TIMEOUT_S)
    assert rate > 0 and all(level.outcomes for level in levels)
    assert run.count("error") == 0 and run.count("hang") == 0, run.reasons("error")
    assert run.count("answered") > 0 and run.count("refused") > 0
    assert run.count("answered") + run.count("refused") == len(run.outcomes)
    assert set(run.reasons("refused")) <= {"overloaded", "reply_timeout"}
    assert run.health.failures == 0 and percentile(run.health.latencies, 99) < 1.0
