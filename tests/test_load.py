"""Load over real HTTP: 200 concurrent widget sessions against a ``loopdesk serve`` subprocess, no errors.

The benchmark with more messages and a one-at-a-time baseline is ``python bench/load.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import import_knowledge, loopdesk_serve, run_load, serve_env

pytestmark = pytest.mark.slow

SESSIONS = 200


def test_200_concurrent_widget_sessions_streamed_over_http_get_no_error(data_dir: Path, base_model_dir: Path):
    env = serve_env(str(base_model_dir), data_dir, max_reply_tokens=32)
    import_knowledge(env)  # the questions are the shop's: each is answered from its help article
    with loopdesk_serve(env) as url:
        report = run_load(url, SESSIONS, messages=1, deadline_s=90)
    print(report.line(f"{SESSIONS} at once"))
    assert report.errors == []
    assert report.replies == SESSIONS
