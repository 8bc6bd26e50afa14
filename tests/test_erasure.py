"""Erasing one conversation: every key and index entry goes, the trainer's export no longer has it, and
the record left names the training runs that may have used it, without text; `loopdesk data export`
prints everything stored about one, `loopdesk data erase` erases it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from feedback_store.errors import ForbiddenError, NotFoundError
from loopdesk.cli import main as loopdesk_cli
from tests.store_helpers import bot_turn, chat, consume_feedback, keys_mentioning, started_days_ago


def rated_and_annotated(store, text: str = "My parcel never came, I'm Jane Doe"):
    conv, token = store.conversations.start("base", {"page": "https://shop.example/orders"})
    store.conversations.append_customer(conv.id, token, text)
    store.conversations.append_bot(conv.id, bot_turn())
    store.conversations.end(conv.id, token)
    store.ratings.rate(conv.id, token, 1, "useless")
    store.annotations.annotate(conv.id, 1, "ada", -2, ["unhelpful"], corrected_reply="Sorry, I'll trace it.",
                               note="parcel lost")
    return conv, token


def test_erasure_removes_every_key_and_index_entry_and_the_trainers_export(store):
    conv, token = rated_and_annotated(store)
    other, _ = chat(store)

    record = store.erasure.erase(conv.id, token)

    assert keys_mentioning(store, conv.id) == {store.keys.erased()}
    for text in ("parcel", "Jane", "useless", "Sorry", "shop.example"):
        assert keys_mentioning(store, text) == set(), text
    assert keys_mentioning(store, "<ctx>") == {store.keys.turns(other.id)}  # the other conversation's reply
    assert (record.by, record.was, record.used_by_runs) == ("customer", "stored", [])
    assert store.feedback.export()[0] == []
    assert store.annotations.queue().conversations == []
    assert [c.id for c in store.conversations.recent()] == [other.id]
    with pytest.raises(NotFoundError):
        store.conversations.get(conv.id)


def test_erasure_is_idempotent_for_the_token_holder_only(store):
    conv, token = chat(store)
    first = store.erasure.erase(conv.id, token)
    assert store.erasure.erase(conv.id, token) == first
    with pytest.raises(ForbiddenError):
        store.erasure.erase(conv.id, "not-the-token")
    other, _ = chat(store)
    with pytest.raises(ForbiddenError):
        store.erasure.erase(other.id, "not-the-token")
    assert store.conversations.get(other.id)
    with pytest.raises(NotFoundError):
        store.erasure.erase("f" * 32, token)


def test_an_erased_conversation_a_run_used_is_recorded_with_the_run_and_its_adapter(store):
    before = consume_feedback(store, adapter_version="v0001")  # started before the feedback: cannot have used it
    conv, token = rated_and_annotated(store)
    used = consume_feedback(store, adapter_version="v0002")
    failed = store.runs.create({})
    store.runs.start(failed.id, store.runs.training_watermark())
    store.runs.finish(failed.id, "failed", error="out of memory")

    record = store.erasure.erase(conv.id)

    assert (record.by, record.used_by_runs, record.adapters) == ("operator", [used.id], ["v0002"])
    assert before.id not in record.used_by_runs
    stored = store.redis.hget(store.keys.erased(), conv.id)
    assert json.loads(stored)["used_by_runs"] == [used.id]
    assert not any(text in stored for text in ("parcel", "Jane", "useless", "Sorry", "shop.example"))


def test_erasure_also_removes_the_numbers_pruning_kept(store, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        conv, token = rated_and_annotated(store)
    consume_feedback(store)
    assert store.retention.prune().numbers_kept == 1
    with pytest.raises(ForbiddenError):
        store.erasure.erase(conv.id, "not-the-token")

    record = store.erasure.erase(conv.id, token)

    assert record.was == "pruned" and len(record.used_by_runs) == 1
    assert store.erasure.pruned(conv.id) is None
    assert keys_mentioning(store, conv.id) == {store.keys.erased()}


def cli(settings, *args: str):
    env = {"LOOPDESK_DATA_DIR": str(settings.data_dir), "LOOPDESK_KEY_PREFIX": settings.key_prefix}
    return CliRunner().invoke(loopdesk_cli, ["data", *args], env=env)


def test_export_prints_everything_stored_and_erase_leaves_only_the_record(store, settings):
    conv, _ = rated_and_annotated(store, "Where is order 1234? My email is jane@doe.example")
    consume_feedback(store, adapter_version="v0003")

    exported = cli(settings, "export", "--conversation", conv.id)

    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.output)
    assert data["conversation"]["meta"] == {"page": "https://shop.example/orders"}
    assert [t["text"] for t in data["turns"]] == ["Where is order 1234? My email is [email]",
                                                  "Your order ships in 2 days."]
    assert data["turns"][1]["prompt_token_ids"] == [1, 2, 3] and data["turns"][1]["context"] == "<ctx>"
    assert [r["comment"] for r in data["rating_history"]] == ["useless"]
    assert data["annotations"]["1"][0]["note"] == "parcel lost"
    indexes = data["indexes"]
    assert indexes["tags"] == ["unhelpful"] and indexes["feedback_log"] == store.feedback.watermark()
    assert {"by_time", "by_adapter", "expert_queue", "expert_queue_by_adapter"} <= {k for k, v in indexes.items() if v}
    assert (data["pruned"], data["erased"]) == (None, None)

    erased = cli(settings, "erase", "--conversation", conv.id)
    assert erased.exit_code == 0, erased.output
    assert f"conversation {conv.id} erased (stored, by operator)" in erased.output and "v0003" in erased.output
    after = json.loads(cli(settings, "export", "--conversation", conv.id).output)
    assert (after["conversation"], after["turns"], after["rating_history"], after["annotations"]) == (None, [], [], {})
    assert after["erased"]["adapters"] == ["v0003"] and "order 1234" not in json.dumps(after)

    missing = cli(settings, "export", "--conversation", "f" * 32)
    assert missing.exit_code == 1 and "nothing is stored about conversation" in missing.output
    assert cli(settings, "erase", "--conversation", "f" * 32).exit_code == 1
