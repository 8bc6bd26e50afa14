"""Every bot process keeps a live knowledge index that follows the store (real Redis): an edit is
retrieved within 2 s by each of two apps on one Redis through the ``kb:changes`` announcement, the
periodic resync catches what an announcement missed, and a rebuild never shows half an index."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import pytest

from bot.runtime.following import Following
from bot.runtime.knowledge import LiveKnowledge
from bot.services import EXTENSION
from feedback_store import FeedbackStore
from loopdesk.articles import ArticleDraft
from loopdesk.config import Settings
from tests.console_helpers import add_accounts, sign_in
from tests.web_helpers import started_app

NO_RESYNC_S = 3600.0  # only an announcement can bring the change in time
FOLLOW_DEADLINE_S = 2.0


def seed(store: FeedbackStore) -> None:
    store.knowledge.create("refunds", "Refunds", "Your money is back within 5 business days.", ["refunds"])
    store.knowledge.create("shipping", "Shipping times", "Parcels arrive in 2 to 4 days.", ["shipping"])


def wait_for_version(knowledge: LiveKnowledge, query: str, article_id: str, version: int) -> float:
    """Seconds until ``query`` retrieves ``article_id`` at ``version``, failing after the deadline."""
    started = time.monotonic()
    while True:
        hits = knowledge.retrieve(query).candidates
        if hits and (hits[0].id, hits[0].version) == (article_id, version):
            return time.monotonic() - started
        assert time.monotonic() - started < FOLLOW_DEADLINE_S, f"still {hits} after {FOLLOW_DEADLINE_S} s"
        time.sleep(0.02)


@pytest.fixture
def apps(settings: Settings, store: FeedbackStore):
    """Two apps on one Redis, each with its own store connection and live index (no periodic resync)."""
    add_accounts(store)
    seed(store)
    with ExitStack() as stack:
        built = []
        for _ in range(2):
            own = FeedbackStore.from_settings(settings, announce=False)
            built.append(stack.enter_context(started_app(settings, own, knowledge=LiveKnowledge(
                own, settings, resync_s=NO_RESYNC_S))))
        yield built


def test_an_edit_in_one_app_is_retrieved_by_both_within_two_seconds_over_pub_sub(apps):
    indexes = [app.extensions[EXTENSION].knowledge for app in apps]
    for knowledge in indexes:
        assert knowledge.retrieve("when is my money back").candidates[0].version == 1  # first use: built, following
    client = apps[0].test_client()
    token = sign_in(client, "otto")
    edited = client.put("/api/kb/articles/refunds", headers={"X-CSRF-Token": token},
                        json={"base_version": 1, "body": "Your money is back within 10 business days."})
    assert edited.status_code == 200 and edited.json["version"] == 2
    for knowledge in indexes:
        assert wait_for_version(knowledge, "when is my money back", "refunds", 2) < FOLLOW_DEADLINE_S
        passage = knowledge.index.articles["refunds"]
        assert passage.body == "Your money is back within 10 business days."
    help_search = apps[1].test_client().get("/api/help/articles?q=money+back").json["articles"]
    assert (help_search[0]["id"], help_search[0]["version"]) == ("refunds", 2)


def test_a_retired_article_leaves_every_index(apps, store):
    indexes = [app.extensions[EXTENSION].knowledge for app in apps]
    def shipping_found() -> list[bool]:
        return ["shipping" in {h.id for h in k.retrieve("parcels arrive", k=5).candidates} for k in indexes]

    assert shipping_found() == [True, True]
    store.knowledge.retire("shipping", 1, by="cli")
    deadline = time.monotonic() + FOLLOW_DEADLINE_S
    while any(shipping_found()):
        assert time.monotonic() < deadline, "a retired article is still retrieved"
        time.sleep(0.02)
    assert all(len(k.index) == 1 and k.index.revision == store.knowledge.revision() for k in indexes)


def test_sync_rebuilds_only_when_the_revision_moved(settings, store):
    seed(store)
    knowledge = LiveKnowledge(store, settings, resync_s=NO_RESYNC_S)
    try:
        first = knowledge.index
        assert first.revision == store.knowledge.revision() == 2 and len(first) == 2
        assert knowledge.sync() is False and knowledge.index is first
        store.knowledge.update("refunds", 1, "cli", title="Refunds and money back")
        assert knowledge.sync() is True or knowledge.index.revision == 3  # the listener may have been first
        assert knowledge.index is not first and knowledge.index.revision == 3
        assert first.articles["refunds"].version == 1  # the old index was replaced, not changed
    finally:
        knowledge.stop()


def test_the_periodic_resync_catches_what_no_announcement_brought():
    synced = threading.Event()
    calls = []

    def silent(stop):  # subscribed, but no announcement ever comes
        while not stop():
            time.sleep(0.01)
        yield from ()

    def sync():
        calls.append(time.monotonic())
        if len(calls) >= 3:
            synced.set()

    following = Following("test", silent, sync, resync_s=0.1)
    following.start()
    try:
        assert len(calls) >= 1  # start syncs once on the caller's thread
        assert synced.wait(2.0), f"only {len(calls)} syncs in 2 s with resync_s=0.1"
    finally:
        following.stop()


def test_readers_never_see_half_an_index_while_it_is_rebuilt(settings, store):
    """Imports change both articles at once; every index a reader gets holds them at one version."""
    seed(store)
    knowledge = LiveKnowledge(store, settings, resync_s=0.05)
    knowledge.start()
    stop, mixed, seen = threading.Event(), [], set()

    def read() -> None:
        while not stop.is_set():
            index = knowledge.index
            versions = {a.version for a in index.articles.values()}
            seen.add(index.revision)
            if len(versions) != 1:
                mixed.append((index.revision, versions))
            time.sleep(0.001)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for round_ in range(8):
            store.knowledge.import_articles([
                ArticleDraft(id="refunds", title="Refunds", body=f"Money back in {round_ + 6} days.", tags=["refunds"]),
                ArticleDraft(id="shipping", title="Shipping times", body=f"Parcels in {round_ + 3} days.",
                             tags=["shipping"])])
            deadline = time.monotonic() + FOLLOW_DEADLINE_S
            while knowledge.index.revision != store.knowledge.revision():
                assert time.monotonic() < deadline, "the index did not follow the import"
                time.sleep(0.01)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        knowledge.stop()
    assert not mixed
    assert len(seen) >= 6  # the readers did see the rebuilds


def test_a_sync_that_keeps_failing_logs_its_traceback_once_then_a_line_now_and_then(caplog):
    attempts = []

    def silent(stop):
        while not stop():
            time.sleep(0.01)
        yield from ()

    def sync():
        attempts.append(1)
        if len(attempts) > 1:  # the first sync (at start) works; then the store is "down"
            raise ConnectionError("Connection refused")

    following = Following("test", silent, sync, resync_s=0.02)
    with caplog.at_level("INFO", logger="bot.runtime.following"):
        following.start()
        deadline = time.monotonic() + 5
        while len(attempts) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        following.stop()
    failed = [r for r in caplog.records if "sync failed" in r.getMessage()]
    assert failed[0].exc_info is not None and all(r.exc_info is None for r in failed[1:])
    assert len(failed) < len(attempts) - 3  # not one record per failure
