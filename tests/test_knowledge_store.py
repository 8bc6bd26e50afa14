"""The knowledge base in a real Redis: versions, history, revert, optimistic edits, imports, announcements."""

from __future__ import annotations

import threading
import time

import pytest

from feedback_store import ConflictError, NotFoundError, ValidationFailed
from feedback_store.knowledge import draft
from loopdesk.articles import MAX_ARTICLE_CHARS

REFUNDS = "Once your return reaches our warehouse, we refund it within 5-7 business days."


def test_every_edit_is_a_new_version_and_history_keeps_them_all(store):
    kb = store.knowledge
    first = kb.create("refunds", "Refunds", REFUNDS, tags=["refunds", "money"], by="ana")
    assert (first.version, first.status, first.tags, first.updated_by) == (1, "published", ["money", "refunds"], "ana")
    second = kb.update("refunds", 1, by="ben", body=REFUNDS.replace("5-7", "3-5"))
    third = kb.update("refunds", 2, by="ana", title="Refunds and your money")
    assert (second.version, third.version) == (2, 3)
    assert kb.get("refunds") == third
    assert [a.version for a in kb.history("refunds")] == [1, 2, 3]
    assert kb.get_version("refunds", 1).body == REFUNDS
    assert kb.get_version("refunds", 2).body.startswith("Once") and "3-5" in kb.get_version("refunds", 2).body
    assert third.body == second.body and third.tags == ["money", "refunds"]  # fields left out are kept
    assert kb.revision() == 3


def test_an_edit_based_on_an_old_version_is_a_conflict_naming_both(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    kb.update("refunds", 1, by="ana", body=REFUNDS + " We email you.")
    with pytest.raises(ConflictError, match=r"now at version 2 .*based on version 1"):
        kb.update("refunds", 1, by="ben", body="a stale edit")
    with pytest.raises(ConflictError, match="version 2"):
        kb.retire("refunds", 1, by="ben")
    with pytest.raises(ConflictError, match="version 2"):
        kb.revert("refunds", 1, base_version=1, by="ben")
    assert kb.get("refunds").version == 2 and len(kb.history("refunds")) == 2


def test_concurrent_edits_on_one_version_keep_exactly_one(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    outcomes: list[str] = []

    def edit(name: str) -> None:
        try:
            kb.update("refunds", 1, by=name, body=f"{REFUNDS} Edited by {name}.")
            outcomes.append("saved")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=edit, args=(f"user{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("saved") == 1 and outcomes.count("conflict") == 5
    assert [a.version for a in kb.history("refunds")] == [1, 2]


def test_retire_and_revert_are_new_versions_and_published_leaves_retired_out(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    kb.create("returns", "Returns", "You can return unused items within 30 days of delivery.")
    kb.update("refunds", 1, by="ana", body="A wrong edit.")
    reverted = kb.revert("refunds", to_version=1, base_version=2, by="ana")
    assert (reverted.version, reverted.body) == (3, REFUNDS)
    retired = kb.retire("returns", 1, by="ana")
    assert (retired.version, retired.status) == (2, "retired")
    with pytest.raises(ConflictError, match="already retired"):
        kb.retire("returns", 2, by="ana")
    snapshot = kb.published()
    assert [a.id for a in snapshot.articles] == ["refunds"] and snapshot.revision == kb.revision() == 5
    assert [a.id for a in kb.list(status="retired")] == ["returns"]
    republished = kb.update("returns", 2, by="ana", status="published")
    assert republished.version == 3 and [a.id for a in kb.published().articles] == ["refunds", "returns"]


def test_an_edit_that_changes_nothing_writes_nothing(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    assert kb.update("refunds", 1, by="ana", body=REFUNDS + "\n\n").version == 1
    assert kb.revert("refunds", 1, base_version=1, by="ana").version == 1
    assert kb.revision() == 1


def test_bad_articles_and_unknown_ids_are_refused_with_clear_errors(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    with pytest.raises(ConflictError, match="already exists"):
        kb.create("refunds", "Refunds again", REFUNDS)
    with pytest.raises(ValidationFailed, match="lowercase letters, digits and '-'"):
        kb.create("Refunds Page", "Refunds", REFUNDS)
    with pytest.raises(ValidationFailed, match="20,000"):
        kb.create("huge", "Huge", "x" * (MAX_ARTICLE_CHARS + 1))
    with pytest.raises(ValidationFailed, match="tags must be lowercase words"):
        kb.create("tagged", "Tagged", REFUNDS, tags=["Money Back"])
    with pytest.raises(ValidationFailed, match="title"):
        kb.update("refunds", 1, by="ana", title="  ")
    with pytest.raises(ValidationFailed, match="status"):
        kb.update("refunds", 1, by="ana", status="deleted")
    with pytest.raises(NotFoundError, match="no knowledge article 'nope'"):
        kb.get("nope")
    with pytest.raises(NotFoundError, match="versions 1 to 1; there is no version 4"):
        kb.get_version("refunds", 4)
    with pytest.raises(NotFoundError):
        kb.update("nope", 1, by="ana", body="x")
    assert kb.revision() == 1 and [a.id for a in kb.list()] == ["refunds"]


def test_list_filters_by_status_and_text_in_id_title_or_tags(store):
    kb = store.knowledge
    kb.create("refunds", "Getting your money back", REFUNDS, tags=["money"])
    kb.create("returns", "Sending an item back", "Return unused items within 30 days.", tags=["returns"])
    kb.create("warranty", "Warranty", "Two years on manufacturing defects.")
    kb.retire("warranty", 1, by="ana")
    assert [a.id for a in kb.list(text="MONEY")] == ["refunds"]
    assert [a.id for a in kb.list(text="back")] == ["refunds", "returns"]
    assert [a.id for a in kb.list(text="ret")] == ["returns"]
    assert [a.id for a in kb.list(status="published")] == ["refunds", "returns"]
    with pytest.raises(ValidationFailed, match="status"):
        kb.list(status="gone")


def test_import_creates_changes_and_leaves_unchanged_articles_alone(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    kb.create("returns", "Returns", "Return unused items within 30 days.")
    items = [draft(id="refunds", title="Refunds", body=REFUNDS),
             draft(id="returns", title="Returns", body="Return unused items within 45 days."),
             draft(id="warranty", title="Warranty", body="Two years on manufacturing defects.", tags=["warranty"])]
    result = kb.import_articles(items, by="import")
    assert (result.created, result.updated, result.unchanged) == (["warranty"], ["returns"], ["refunds"])
    assert result.revision == kb.revision() == 3  # two creates, then one import
    assert kb.get("refunds").version == 1 and kb.get("returns").version == 2
    assert kb.get("warranty").updated_by == "import"
    again = kb.import_articles(items)
    assert (again.created, again.updated, again.revision) == ([], [], 3)


def test_import_with_a_duplicate_id_writes_nothing(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    twice = [draft(id="returns", title="Returns", body="30 days."), draft(id="returns", title="Again", body="x")]
    with pytest.raises(ValidationFailed, match="'returns' appears twice"):
        kb.import_articles(twice)
    assert kb.revision() == 1 and [a.id for a in kb.list()] == ["refunds"]


def test_a_batch_with_one_stale_article_writes_none_of_it(store):
    kb = store.knowledge
    kb.create("refunds", "Refunds", REFUNDS)
    fresh = kb._version(draft(id="returns", title="Returns", body="30 days."), 1, "import")
    stale = kb._version(draft(id="refunds", title="Refunds", body="changed"), 1, "import")  # refunds exists: not new
    with pytest.raises(ConflictError, match="refunds already exists"):
        kb._write([(fresh, 0), (stale, 0)], {"action": "import"})
    with pytest.raises(NotFoundError):
        kb.get("returns")
    assert kb.get("refunds").body == REFUNDS and kb.revision() == 1


def test_each_change_and_each_import_is_announced_once(store):
    kb = store.knowledge
    received: list[dict] = []
    stop = threading.Event()
    ready = threading.Event()

    def listen() -> None:
        ready.set()
        for message in kb.listen(stop.is_set, timeout_s=0.1):
            received.append(message)

    thread = threading.Thread(target=listen)
    thread.start()
    ready.wait()
    time.sleep(0.3)  # let the subscription reach Redis
    kb.create("refunds", "Refunds", REFUNDS)
    kb.update("refunds", 1, by="ana", body=REFUNDS + " We email you.")
    kb.import_articles([draft(id="returns", title="Returns", body="30 days."),
                        draft(id="warranty", title="Warranty", body="Two years.")])
    kb.retire("refunds", 2, by="ana")
    deadline = time.time() + 5
    while len(received) < 4 and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    assert [(m["revision"], m["action"], m["article_id"], m["version"]) for m in received] == [
        (1, "create", "refunds", 1), (2, "update", "refunds", 2), (3, "import", None, None), (4, "retire", "refunds", 3)]
    assert received[2]["created"] == ["returns", "warranty"] and received[2]["updated"] == []
