"""feedback_store against a real Redis: lifecycle, validation, atomicity, queue, registry, runs."""

from __future__ import annotations

import threading
import time

import pytest

from feedback_store import (
    ConflictError,
    ForbiddenError,
    InvalidTransitionError,
    NotFoundError,
    RatingLockedError,
    ValidationFailed,
)
from feedback_store.annotations import QueueFilter
from feedback_store.errors import LockHeldError
from feedback_store.records import AdapterVersion, BotTurn
from tests.store_helpers import bot_turn, chat


def test_conversation_lifecycle_keeps_turns_in_order(store):
    conv, token = chat(store, turns=2)
    turns = store.conversations.turns(conv.id)
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [t.index for t in turns] == [0, 1, 2, 3]
    assert turns[1].logprobs == [-0.1, -2.0] and turns[1].reply_token_ids == [4, 5]
    ended = store.conversations.end(conv.id, token)
    assert ended.status == "ended" and ended.n_turns == 4
    assert store.conversations.end(conv.id, token).ended_at == ended.ended_at  # idempotent


def test_writes_to_ended_or_unknown_conversation_are_refused(store):
    conv, token = chat(store)
    store.conversations.end(conv.id, token)
    with pytest.raises(ConflictError, match="ended"):
        store.conversations.append_customer(conv.id, token, "hello?")
    with pytest.raises(NotFoundError):
        store.conversations.append_customer("nope", token, "hello?")
    with pytest.raises(ForbiddenError, match="token"):
        store.conversations.end(conv.id, "wrong-token")
    assert store.conversations.get(conv.id).n_turns == 2


def test_bad_records_raise_validation_errors_and_write_nothing(store):
    conv, token = chat(store)
    with pytest.raises(ValidationFailed, match="at most"):
        store.conversations.append_customer(conv.id, token, "x" * 9000)
    with pytest.raises(ValidationFailed):
        store.conversations.append_customer(conv.id, token, "")
    with pytest.raises(ValueError, match="log-probs"):
        BotTurn(**{**bot_turn().model_dump(), "logprobs": [-0.1]})
    assert store.conversations.get(conv.id).n_turns == 2


def test_rating_needs_token_is_idempotent_and_correctable(store):
    conv, token = chat(store)
    with pytest.raises(ForbiddenError):
        store.ratings.rate(conv.id, "not-the-token", 5)
    with pytest.raises(ValidationFailed, match="score"):
        store.ratings.rate(conv.id, token, 6)
    with pytest.raises(ValidationFailed, match="comment"):
        store.ratings.rate(conv.id, token, 3, "c" * 3000)
    assert store.ratings.rate(conv.id, token, 2, "slow") is True
    seq = store.feedback.watermark()
    assert store.ratings.rate(conv.id, token, 2, "slow") is False
    assert store.feedback.watermark() == seq  # a repeat is not new feedback
    assert store.ratings.rate(conv.id, token, 4, "actually fine") is True
    got = store.conversations.get(conv.id)
    assert (got.csat, got.csat_comment) == (4, "actually fine")


def test_rating_correction_window_closes(settings):
    from feedback_store import FeedbackStore

    store = FeedbackStore.from_settings(settings.replace(rating_correction_window_s=0), announce=False)
    conv, token = chat(store)
    store.ratings.rate(conv.id, token, 3)
    time.sleep(0.01)
    with pytest.raises(RatingLockedError, match="window"):
        store.ratings.rate(conv.id, token, 5)
    assert store.ratings.rate(conv.id, token, 3) is False
    assert store.conversations.get(conv.id).csat == 3


def test_several_experts_annotate_one_turn(store):
    conv, token = chat(store)
    store.annotations.annotate(conv.id, 1, "alice", -2, ["wrong_info"], "We ship in 3-5 days.")
    store.annotations.annotate(conv.id, 1, "bob", -1, ["too_long", "wrong_info"])
    store.annotations.annotate(conv.id, 1, "alice", -1, ["wrong_info"], "Ships in 3-5 business days.")
    anns = store.annotations.for_conversation(conv.id)[1]
    assert {a.expert_id: a.score for a in anns} == {"alice": -1, "bob": -1}
    assert next(a for a in anns if a.expert_id == "alice").corrected_reply == "Ships in 3-5 business days."
    with pytest.raises(ValidationFailed, match="customer"):
        store.annotations.annotate(conv.id, 0, "alice", 1)
    with pytest.raises(NotFoundError, match="turn 7"):
        store.annotations.annotate(conv.id, 7, "alice", 1)
    with pytest.raises(ValidationFailed, match="score"):
        store.annotations.annotate(conv.id, 1, "alice", 3)
    with pytest.raises(ValidationFailed, match="tags"):
        store.annotations.annotate(conv.id, 1, "alice", 1, ["Not A Tag"])


def test_annotation_queue_orders_unannotated_then_lowest_csat_and_filters(store):
    made = {}
    for name, csat, version in [("c5", 5, "base"), ("c1", 1, "v1"), ("c3", 3, "base"), ("none", None, "base"), ("c2", 2, "base")]:
        conv, token = chat(store, version=version)
        store.conversations.end(conv.id, token)
        if csat:
            store.ratings.rate(conv.id, token, csat)
        made[name] = conv.id
    open_conv, _ = chat(store)  # still open: not in the queue
    store.annotations.annotate(made["c2"], 1, "alice", 0, ["great"])
    order = [c.id for c in store.annotations.queue().conversations]
    names = {v: k for k, v in made.items()}
    assert [names[i] for i in order] == ["c1", "c3", "c5", "none", "c2"]
    assert open_conv.id not in order
    page = store.annotations.queue(QueueFilter(csat_max=3))
    assert [names[c.id] for c in page.conversations] == ["c1", "c3", "c2"]
    assert (page.unannotated, page.annotated) == (2, 1)  # the counts follow the filter: c1, c3; c2
    assert [names[c.id] for c in store.annotations.queue(QueueFilter(adapter_version="v1")).conversations] == ["c1"]
    assert [names[c.id] for c in store.annotations.queue(QueueFilter(tag="great")).conversations] == ["c2"]
    assert [names[c.id] for c in store.annotations.queue(QueueFilter(include_annotated=False), offset=1, limit=2).conversations] == ["c3", "c5"]
    assert store.annotations.queue(QueueFilter(since=time.time() + 60)).conversations == []


def test_turns_with_feedback_export_after_watermark(store):
    a, ta = chat(store, turns=2)
    b, tb = chat(store)
    store.ratings.rate(a.id, ta, 5)
    turns, mark = store.feedback.export(0)
    assert [(t.conversation_id, t.turn.index, t.csat) for t in turns] == [(a.id, 1, 5), (a.id, 3, 5)]
    assert turns[1].customer_text == "question 1"
    store.annotations.annotate(b.id, 1, "alice", 2)
    later, mark2 = store.feedback.export(mark)
    assert [e.conversation_id for e in later] == [b.id] and later[0].annotations[0].score == 2
    assert mark2 > mark and store.feedback.export(mark2) == ([], mark2)


def register(store, version: str, parent: str = "base") -> AdapterVersion:
    now = time.time()
    return store.adapters.register(AdapterVersion(version=version, path=f"/adapters/{version}", sha256="0" * 64,
                                                  base_model="tiny", parent=parent, created_at=now, updated_at=now))


def test_adapter_transitions_and_announcements(store):
    heard, stop = [], threading.Event()
    listener = threading.Thread(target=lambda: heard.extend(store.adapters.listen(stop.is_set, 0.05)))
    listener.start()
    time.sleep(0.2)
    v1, v2 = store.adapters.next_version(), store.adapters.next_version()
    register(store, v1)
    register(store, v2, parent=v1)
    with pytest.raises(ConflictError, match="already registered"):
        register(store, v1, parent=v2)
    assert store.adapters.get(v1).parent == "base"
    store.adapters.promote(v1)
    store.adapters.send_to_canary(v2)
    assert (store.adapters.active(), store.adapters.canary()) == (v1, v2)
    store.adapters.promote(v2, "canary won")
    assert store.adapters.get(v1).status == "retired" and store.adapters.canary() is None
    assert store.adapters.rollback("CSAT fell") == v1
    assert store.adapters.active() == v1 and store.adapters.get(v2).status == "rejected"
    with pytest.raises(InvalidTransitionError, match="rejected"):
        store.adapters.promote(v2)
    with pytest.raises(InvalidTransitionError, match="roll it back"):
        store.adapters.reject(v1, "no")
    assert store.adapters.rollback("back to base") == "base" and store.adapters.active() == "base"
    time.sleep(0.3)
    stop.set()
    listener.join()
    assert [(m["event"], m["version"], m["active"]) for m in heard] == [
        ("promoted", v1, v1), ("canary", v2, v1), ("promoted", v2, v2),
        ("rolled_back", v2, v1), ("rolled_back", v1, "base")]


def test_run_lock_is_exclusive_and_expires(settings):
    from feedback_store import FeedbackStore

    store = FeedbackStore.from_settings(settings.replace(run_lock_ttl_s=0.3), announce=False)
    with store.runs.lock():
        with pytest.raises(LockHeldError, match="another training run"):
            store.runs.lock().acquire()
    held = store.runs.lock().acquire()  # never released: a killed worker
    time.sleep(0.4)
    store.runs.lock().acquire().release()
    assert held.release() is False


def test_run_records_progress_and_watermark(store):
    run = store.runs.create({"lr": 1e-3}, trigger="schedule")
    store.runs.start(run.id, watermark_from=0)
    first = store.runs.report(run.id, stage="ppo", step=1, reward=0.1)
    store.runs.report(run.id, stage="ppo", step=2, reward=0.3)
    assert [e["step"] for _, e in store.runs.progress(run.id)] == [1, 2]
    assert [e["reward"] for _, e in store.runs.progress(run.id, after=first)] == [0.3]
    done = store.runs.finish(run.id, "succeeded", {"kl": 0.2}, adapter_version="v0001", watermark_to=7)
    assert done.status == "succeeded" and store.runs.training_watermark() == 7
    with pytest.raises(InvalidTransitionError):
        store.runs.start(run.id, 0)
    assert store.runs.list()[0].metrics == {"kl": 0.2}


def test_schedules_validate_cron_and_fire_once(store):
    with pytest.raises(ValidationFailed, match="cron"):
        store.schedules.add("every day at noon")
    with pytest.raises(ValidationFailed, match="cron"):
        store.schedules.add("61 * * * *")
    yearly = store.schedules.add("0 0 1 1 *")
    assert store.schedules.due(now=yearly.created_at + 1) == []
    store.schedules.delete(yearly.id)
    schedule = store.schedules.add("*/5 * * * *")
    later = schedule.created_at + 600
    assert [s.id for s in store.schedules.due(now=later)] == [schedule.id]
    assert store.schedules.due(now=later) == []
    store.schedules.set_enabled(schedule.id, False)
    assert store.schedules.due(now=later + 600) == []


def test_every_key_lives_under_the_prefix(settings):
    from feedback_store import FeedbackStore
    from feedback_store.connection import resolve_redis_url

    own_db = resolve_redis_url(settings, announce=False).rsplit("/", 1)[0] + "/9"
    store = FeedbackStore.from_settings(settings.replace(redis_url=own_db), announce=False)
    store.redis.flushdb()
    conv, token = chat(store)
    store.ratings.rate(conv.id, token, 4)
    store.conversations.end(conv.id, token)
    store.annotations.annotate(conv.id, 1, "alice", 1, ["great"])
    store.runs.create({})
    store.schedules.add("0 * * * *")
    written = list(store.redis.scan_iter(count=1000))
    assert len(written) > 10
    assert all(k.startswith(f"{settings.key_prefix}:") for k in written)


def test_users_have_roles_and_hashed_passwords(store):
    store.users.add("ann", "expert", "correct horse")
    with pytest.raises(ConflictError, match="exists"):
        store.users.add("ann", "operator", "another pass")
    with pytest.raises(ValidationFailed, match="role"):
        store.users.add("bob", "customer", "long enough")
    with pytest.raises(ValidationFailed, match="at least"):
        store.users.add("bob", "operator", "short")
    assert store.users.authenticate("ann", "correct horse").role == "expert"
    assert store.users.authenticate("ann", "wrong horse") is None
    assert store.users.authenticate("nobody", "correct horse") is None
    assert "correct horse" not in str(store.redis.hgetall(store.keys.user("ann")))


def test_training_round_is_queued_with_its_run_record(store):
    run = store.training.enqueue_round(trigger="console", config={"rounds": 1})
    assert store.runs.get(run.id).status == "queued" and run.trigger == "console"
    assert store.training.pending() == 1
    job = store.training.queue.jobs[0]
    assert job.func_name == "trainer.jobs.run_round" and list(job.args) == [run.id]


def test_more_concurrent_requests_than_redis_py_default_pool_all_succeed(store):
    """redis-py 8's default pool raises beyond 100 connections; ours holds more and waits when full."""
    from concurrent.futures import ThreadPoolExecutor

    conv, token = store.conversations.start("base")
    # each call holds its connection for 0.3 s, so 150 calls need 150 connections at once
    with ThreadPoolExecutor(max_workers=150) as pool:
        results = list(pool.map(lambda i: store.redis.blpop([store.keys.lock("pool-test")], timeout=0.3), range(150)))
    assert results == [None] * 150
    assert store.conversations.check_token(conv.id, token).id == conv.id
