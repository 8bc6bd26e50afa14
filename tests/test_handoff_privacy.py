"""Customers' data in handed-off conversations (real Redis): an agent's reply is PII masked on arrival like
the customer's messages; erasure and the retention period remove the handoffs, the agents' replies, the
email address left for a reply and the inbox's entries with the rest; `loopdesk data export` shows them;
a live follow of the conversation ends when it is erased."""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

from feedback_store import ConflictError, FeedbackStore, NotFoundError
from feedback_store.erasure import Replacement, Stored
from feedback_store.records import AgentTurn
from loopdesk.cli import main as loopdesk_cli
from tests.console_helpers import notice
from tests.store_helpers import bot_turn, consume_feedback, keys_mentioning, started_days_ago

CONTACT = "sam.lee@example.com"
AGENT_NAME = "Abe from Northwind"
REPLY = "Write to me at abe.smith@northwind.example or call 020 7946 0958."
MASKED_REPLY = "Write to me at [email] or call [phone]."
# what only the handed-off part of the conversation holds
HANDOFF_TEXTS = ("sam.lee", "abe.smith", "7946", "Write to me", "07700", "ring me", AGENT_NAME, '"claimed_by"')


def agent_reply(text: str) -> AgentTurn:
    return AgentTurn(index=0, agent_id="abe", agent_name=AGENT_NAME, text=text, created_at=time.time())


def handed_off(store: FeedbackStore, resolve: bool = False) -> tuple[str, str]:
    """A conversation asked for a person while nobody was available (an email left), again when Abe was, then
    claimed and answered by Abe, the customer writing meanwhile; resolved if asked. Returns (id, token)."""
    conv, token = store.conversations.start("base", {"page": "https://shop.example/orders"})
    store.conversations.append_customer(conv.id, token, "Where is my tent?")
    store.conversations.append_bot(conv.id, bot_turn())
    store.handoffs.request(conv.id, "customer_asked", False, notice())
    store.handoffs.leave_contact(conv.id, CONTACT)
    store.handoffs.request(conv.id, "customer_button", True, notice())
    store.handoffs.claim(conv.id, "abe", AGENT_NAME)
    store.conversations.append_customer(conv.id, token, "Or ring me on 07700 900123")
    store.handoffs.reply(conv.id, agent_reply(REPLY))
    if resolve:
        store.handoffs.resolve(conv.id, "abe")
    return conv.id, token


def test_an_agents_reply_and_the_customers_messages_after_a_handoff_are_stored_masked(store):
    conv_id, _ = handed_off(store)

    turns = store.conversations.turns(conv_id)

    assert [t.text for t in turns[-2:]] == ["Or ring me on [phone]", MASKED_REPLY]
    assert store.handoffs.reply(conv_id, agent_reply(REPLY)).text == MASKED_REPLY  # what the inbox shows back
    assert keys_mentioning(store, "abe.smith") == set() and keys_mentioning(store, "900123") == set()
    assert store.handoffs.get(conv_id).contact_email == CONTACT  # left to be written to: kept until erased


def test_erasing_a_handed_off_conversation_leaves_no_handoff_agent_reply_or_inbox_entry(store):
    conv_id, token = handed_off(store)
    assert {store.keys.handoff(conv_id), store.keys.earlier_handoffs(conv_id), store.keys.handoffs_with_agents(),
            store.keys.contact_requests()} <= keys_mentioning(store, conv_id)

    record = store.erasure.erase(conv_id, token)

    assert record.was == "stored"
    assert keys_mentioning(store, conv_id) == {store.keys.erased()}
    for text in (*HANDOFF_TEXTS, "[email]", "[phone]"):
        assert keys_mentioning(store, text) == set(), text
    assert (store.handoffs.waiting(), store.handoffs.claimed(), store.handoffs.contact_requests()) == ([], [], [])
    assert store.handoffs.history(conv_id) == []
    with pytest.raises(NotFoundError):
        store.handoffs.reply(conv_id, agent_reply("Are you still there?"))
    with pytest.raises(ConflictError, match="ask for a person first"):
        store.handoffs.leave_contact(conv_id, CONTACT)


def test_a_live_follow_ends_at_once_when_its_conversation_is_erased(store):
    conv_id, token = handed_off(store)
    seen, done = [], threading.Event()

    def follow() -> None:
        for change in store.handoffs.follow(conv_id, idle_s=15.0):
            seen.append(change)
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    store.erasure.erase(conv_id, token)

    assert done.wait(5), "the follow went on after the erasure"
    assert time.monotonic() - started < 2  # the erasure's announcement, not the 15 s keep-alive, ended it
    assert [c.turn.text for c in seen if c is not None and c.turn is not None][-1] == MASKED_REPLY


def test_pruning_an_expired_handed_off_conversation_keeps_only_the_handoffs_numbers(store, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        conv_id, token = handed_off(store, resolve=True)
        store.ratings.rate(conv_id, token, 4)
    consume_feedback(store)

    report = store.retention.prune()

    assert (report.pruned, report.numbers_kept) == (1, 1)
    assert keys_mentioning(store, conv_id) == {store.keys.pruned()}
    kept = store.erasure.pruned(conv_id)
    assert [(h.reason, h.available) for h in kept.handoffs] == [("customer_asked", False), ("customer_button", True)]
    last = kept.handoffs[-1]
    assert last.requested_at <= last.claimed_at <= last.resolved_at and kept.handoffs[0].claimed_at is None
    assert kept.n_turns == 6 and [t.source for t in kept.turns] == ["model", "handoff", "handoff"]
    record = store.redis.hget(store.keys.pruned(), conv_id)
    for text in (*HANDOFF_TEXTS, "Where is my tent", "contact_email", "agent_name"):
        assert text not in record, text
    assert store.handoffs.history(conv_id) == [] and store.handoffs.contact_requests() == []


def test_pruning_an_expired_chat_still_waiting_for_an_agent_leaves_nothing(store, monkeypatch):
    with started_days_ago(monkeypatch, 91):
        conv, token = store.conversations.start("base")
        store.conversations.append_customer(conv.id, token, "I want a person, mail me at sam@example.com")
        store.handoffs.request(conv.id, "customer_asked", True, notice())
    assert [h.conversation_id for h in store.handoffs.waiting()] == [conv.id]

    assert store.retention.prune().pruned == 1

    assert keys_mentioning(store, conv.id) == set() and store.handoffs.waiting() == []


def test_a_removal_reads_again_when_an_email_request_is_answered_meanwhile(store):
    conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "Nobody there?")
    store.handoffs.request(conv.id, "customer_button", False, notice())
    store.handoffs.leave_contact(conv.id, CONTACT)
    seen: list[float | None] = []

    def decide(stored: Stored) -> Replacement:
        seen.append(stored.parsed_handoffs()[-1].resolved_at)
        if len(seen) == 1:
            store.handoffs.resolve(conv.id, "abe")  # lands between the read and the removal
        return Replacement()

    store.erasure.remove(conv.id, decide)

    assert len(seen) == 2 and seen[0] is None and seen[1] is not None
    assert keys_mentioning(store, conv.id) == set()


def test_data_export_shows_the_handoffs_and_agents_replies_and_erase_removes_them(store, settings):
    conv_id, _ = handed_off(store)
    env = {"LOOPDESK_DATA_DIR": str(settings.data_dir), "LOOPDESK_KEY_PREFIX": settings.key_prefix}

    def cli(*args: str):
        result = CliRunner().invoke(loopdesk_cli, ["data", *args, "--conversation", conv_id], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    data = json.loads(cli("export"))

    assert [(h["reason"], h["contact_email"]) for h in data["handoffs"]] == [("customer_asked", CONTACT),
                                                                            ("customer_button", CONTACT)]
    assert data["handoffs"][1]["claimed_by"] == "abe" and data["conversation"]["status"] == "with_agent"
    agent = data["turns"][-1]
    assert (agent["role"], agent["agent_name"], agent["text"]) == ("agent", AGENT_NAME, MASKED_REPLY)
    indexes = data["indexes"]
    assert indexes["handoffs_with_agent"] and indexes["contact_requests"] and indexes["handoffs_waiting"] is None
    assert "erased (stored, by operator)" in cli("erase")
    after = json.loads(cli("export"))
    assert (after["handoffs"], after["turns"], after["conversation"]) == ([], [], None)
    assert not any(text in json.dumps(after) for text in HANDOFF_TEXTS)
