"""The retention period: an expired conversation is pruned from every key and index, keeping only its
numbers when it had feedback; young ones and feedback the next training round has not consumed stay;
a prune killed midway leaves each conversation whole or gone; the scheduler and `loopdesk data prune`
run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from feedback_store.records import ArticleRef, RatingSource
from loopdesk.cli import main as loopdesk_cli
from tests.store_helpers import (bot_turn, chat, consume_feedback, key_contents, keys_mentioning,
                                 started_days_ago)
from trainer.config import GateConfig
from trainer.scheduler import loop

ROOT = Path(__file__).resolve().parents[1]
RATER = RatingSource(client_hash="a" * 32, agent_hash="b" * 32, rater="a" * 32)


def test_an_expired_conversation_is_pruned_from_every_key_and_index_and_keeps_only_its_numbers(store, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        conv, token = store.conversations.start("base", {"page": "https://shop.example/boots"})
        store.conversations.append_customer(conv.id, token, "Where is my parcel? I am Jane Doe of 4 Elm Road.")
        reply = bot_turn("It ships in two days.").model_copy(update={"articles": [
            ArticleRef(id="returns", version=3, title="Returns", score=2.5)]})
        store.conversations.append_bot(conv.id, reply)
        store.conversations.end(conv.id, token)
        store.ratings.rate(conv.id, token, 2, "slow answer", RATER)
        store.annotations.annotate(conv.id, 1, "ada", -1, ["rude"], corrected_reply="Sorry, it left today.",
                                   note="the customer was upset")
        store.annotations.annotate(conv.id, 1, "ada", -2, ["wrong_info"])  # replaces it; tag:rude still lists it
    consume_feedback(store)
    assert len(keys_mentioning(store, conv.id)) >= 11  # its data and every index that refers to it

    report = store.retention.prune()

    assert (report.expired, report.pruned, report.numbers_kept, report.held) == (1, 1, 1, 0)
    assert keys_mentioning(store, conv.id) == {store.keys.pruned()}
    kept = store.erasure.pruned(conv.id)
    assert (kept.csat, kept.adapter_version, kept.n_turns) == (2, "base", 2)
    assert [(t.index, t.expert_scores, t.tags, t.articles, t.reply_tokens) for t in kept.turns] == [
        (1, [-2], ["wrong_info"], ["returns@3"], 2)]
    record = store.redis.hget(store.keys.pruned(), conv.id)
    for text in ("parcel", "Jane", "Elm", "two days", "slow answer", "Sorry", "upset", "shop.example", "<ctx>",
                 "a" * 32, "b" * 32, "prompt_token_ids", "logprobs"):
        assert text not in record, text
    assert store.feedback.export() == ([], 0)
    assert store.annotations.queue().conversations == []


def test_young_conversations_stay_and_expired_feedback_waits_for_the_round_that_consumes_it(store, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        unrated, _ = chat(store)
        rated, token = chat(store)
        store.ratings.rate(rated.id, token, 5)
    young, young_token = chat(store, turns=2)
    store.ratings.rate(young.id, young_token, 4)

    first = store.retention.prune()

    assert (first.expired, first.pruned, first.numbers_kept, first.held) == (2, 1, 0, 1)
    assert keys_mentioning(store, unrated.id) == set()  # no feedback: nothing of it is left
    assert store.conversations.get(rated.id).csat == 5
    assert {t.conversation_id for t in store.feedback.export()[0]} == {rated.id, young.id}

    consume_feedback(store)
    second = store.retention.prune()
    assert (second.expired, second.pruned, second.numbers_kept, second.held) == (1, 1, 1, 0)
    assert store.erasure.pruned(rated.id).csat == 5
    assert store.conversations.get(young.id).n_turns == 4
    assert store.retention.prune().expired == 0


def test_retention_zero_keeps_every_conversation(store, settings, monkeypatch):
    from feedback_store import FeedbackStore

    forever = FeedbackStore(store.redis, settings.replace(retention_days=0))
    with started_days_ago(monkeypatch, 3650):
        old, _ = chat(store)
    report = forever.retention.prune()
    assert (report.expired, report.pruned) == (0, 0) and forever.retention.expired() == 0
    assert store.conversations.get(old.id)


def cli_env(settings, **extra: str) -> dict[str, str]:
    return {"LOOPDESK_DATA_DIR": str(settings.data_dir), "LOOPDESK_KEY_PREFIX": settings.key_prefix, **extra}


def test_prune_command_dry_run_changes_nothing_then_prunes(store, settings, monkeypatch):
    with started_days_ago(monkeypatch, 100):
        gone, _ = chat(store)
        held, token = chat(store)
        store.ratings.rate(held.id, token, 3)
    before = key_contents(store)

    dry = CliRunner().invoke(loopdesk_cli, ["data", "prune", "--dry-run"], env=cli_env(settings))

    assert dry.exit_code == 0, dry.output
    assert "2 conversations started before" in dry.output
    assert "would prune 1 (0 keep their numbers); held 1" in dry.output
    assert key_contents(store) == before
    real = CliRunner().invoke(loopdesk_cli, ["data", "prune"], env=cli_env(settings))
    assert real.exit_code == 0 and "pruned 1 (0 keep their numbers); held 1" in real.output
    assert keys_mentioning(store, gone.id) == set() and store.conversations.get(held.id)
    off = CliRunner().invoke(loopdesk_cli, ["data", "prune"], env=cli_env(settings, LOOPDESK_RETENTION_DAYS="0"))
    assert off.exit_code == 0 and "retention is off" in off.output
    bad = CliRunner().invoke(loopdesk_cli, ["data", "prune"], env=cli_env(settings, LOOPDESK_RETENTION_DAYS="-1"))
    assert bad.exit_code == 2 and "LOOPDESK_RETENTION_DAYS must be >= 0" in bad.output


def test_the_scheduler_prunes_at_its_first_pass(store, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        old, _ = chat(store)
    lines: list[str] = []
    loop(store, GateConfig(), interval_s=0.1, echo=lines.append, once=True)
    assert [line for line in lines if line.startswith("retention: 1 conversations started before")]
    assert "pruned 1 (0 keep their numbers); held 0" in lines[-1]
    assert keys_mentioning(store, old.id) == set()


def test_a_prune_killed_midway_leaves_every_conversation_whole_or_gone(store, settings, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        convs = [chat(store) for _ in range(300)]
        for conv, token in convs[::2]:
            store.ratings.rate(conv.id, token, 4, "fine")
    consume_feedback(store)
    contents = key_contents(store)
    whole = {conv.id: keys_mentioning(store, conv.id, contents) for conv, _ in convs}
    env = {**os.environ, **cli_env(settings), "PYTHONPATH": str(ROOT)}
    prune = subprocess.Popen([sys.executable, "-m", "loopdesk", "data", "prune"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while store.redis.hlen(store.keys.pruned()) < 5:
        assert prune.poll() is None and time.monotonic() < deadline, "the prune ended before it could be killed"
        time.sleep(0.005)
    os.kill(prune.pid, signal.SIGKILL)
    prune.wait()

    contents = key_contents(store)
    now = {conv.id: keys_mentioning(store, conv.id, contents) for conv, _ in convs}
    gone = {c for c, keys in now.items() if keys <= {store.keys.pruned()}}
    assert all(now[c] == whole[c] for c in now.keys() - gone), "a conversation was left half pruned"
    rated = {conv.id for conv, _ in convs[::2]}
    assert all((store.keys.pruned() in now[c]) == (c in rated) for c in gone)
    assert 5 <= len(gone) < len(convs), f"{len(gone)} of {len(convs)} pruned: the kill did not land midway"
    assert store.retention.prune().pruned == len(convs) - len(gone)
