"""The generation worker under backpressure, on the real test-size model (``tests/slow_engines``): a
reply past its deadline or cancelled leaves the batch at once, and a crashed generation thread fails
what it held with a clean error and is started again."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bot.app import create_app
from bot.runtime import GenerationError
from bot.runtime.errors import QueueFullError, ReplyCancelledError, ReplyTimeoutError
from feedback_store import FeedbackStore
from loopdesk.config import Settings
from tests.slow_engines import STEP_S, CrashOnceEngine, LongReplyEngine, wait_for

ASK = [{"role": "user", "content": "How do I return a damaged tent?"}]
REPLY_TOKENS = 250  # at STEP_S a token, a whole reply takes 2.5 s


def started(engine):
    engine.start()
    return engine


@pytest.fixture
def long_replies(settings: Settings, store: FeedbackStore, base_model_dir: Path):
    engine = started(LongReplyEngine(settings.replace(base_model=str(base_model_dir), max_reply_tokens=REPLY_TOKENS,
                                                      reply_deadline_s=0.5, max_queued_replies=2), store))
    yield engine
    engine.stop()


def test_a_reply_past_its_deadline_leaves_the_batch_and_raises_a_timeout(long_replies):
    began = time.monotonic()
    with pytest.raises(ReplyTimeoutError):
        long_replies.generate(ASK, "base")
    took = time.monotonic() - began
    assert 0.5 <= took < 0.5 + REPLY_TOKENS * STEP_S / 2, took  # stopped at the deadline, not at the reply's end
    assert long_replies.decoding() == 0 and long_replies.queue_depth() == 0
    long_replies.settings = long_replies.settings.replace(max_reply_tokens=8)  # one that fits in its deadline
    assert len(long_replies.generate(ASK, "base").reply_token_ids) == 8  # the worker serves on


def test_a_cancelled_reply_is_dropped_from_the_batch_within_a_step_or_two(long_replies):
    cancelled = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(long_replies.generate, ASK, "base", lambda text: None, cancelled=cancelled)
        wait_for(lambda: long_replies.decoding() == 1, what="the reply decoding")
        cancelled.set()
        took = wait_for(lambda: long_replies.decoding() == 0, what="the batch emptying")
        with pytest.raises(ReplyCancelledError):
            reply.result(timeout=5)
    assert took < 0.2, took


def test_slots_bound_the_waiting_replies_and_come_back_when_a_reply_decodes(long_replies):
    first, second = long_replies.reserve(), long_replies.reserve()
    with pytest.raises(QueueFullError) as refused:
        long_replies.reserve()
    assert refused.value.retry_after_s > 0
    with ThreadPoolExecutor(1) as pool:
        pool.submit(long_replies.generate, ASK, "base", slot=first)
        wait_for(lambda: long_replies.admission.waiting() == 1, what="the slot coming back as the reply decodes")
    second.release()
    second.release()  # twice is harmless
    assert long_replies.admission.waiting() == 0


def test_a_crashed_generation_thread_fails_its_requests_restarts_and_serves_again(
        settings: Settings, store: FeedbackStore, base_model_dir: Path):
    engine = started(CrashOnceEngine(settings.replace(base_model=str(base_model_dir), max_reply_tokens=REPLY_TOKENS,
                                                      max_batch_size=2), store))
    try:
        with ThreadPoolExecutor(6) as pool:
            replies = [pool.submit(engine.generate, ASK, "base") for _ in range(6)]
            wait_for(lambda: engine.decoding() == 2 and engine.queue_depth() == 4, what="2 decoding and 4 queued")
            engine.armed.set()
            errors = [future.exception(timeout=10) for future in replies]
        assert all(isinstance(e, GenerationError) and "crashed" in str(e) for e in errors), errors
        wait_for(lambda: engine.worker_restarts() == 1 and engine.ready(), what="the restart")
        assert engine.decoding() == 0 and engine.queue_depth() == 0
        engine.settings = engine.settings.replace(max_reply_tokens=4)  # a short reply this time
        assert len(engine.generate(ASK, "base").reply_token_ids) == 4
        metrics = create_app(settings, engine, store).test_client().get("/metrics").get_data(as_text=True)
        assert "loopdesk_generation_worker_restarts_total 1.0" in metrics
    finally:
        engine.stop()
