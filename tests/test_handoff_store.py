"""Handoffs in the store (real Redis): the atomic claim under racing agents, who may write while a person
has the chat, the statuses and their announcements, contact requests, presence expiry, and the export
that carries each handoff on the bot turns before it."""

from __future__ import annotations

import threading
import time

import pytest

from feedback_store import ConflictError, FeedbackStore, ForbiddenError
from feedback_store.records import AgentTurn, BotTurn
from tests.console_helpers import notice, seed_conversation, seed_handoff


def agent_turn(agent: str, text: str) -> AgentTurn:
    return AgentTurn(index=0, agent_id=agent, agent_name=agent.capitalize(), text=text, created_at=time.time())


def model_turn(text: str) -> BotTurn:
    return BotTurn(index=0, text=text, context=f"<|assistant|>{text}", prompt_token_ids=[1], reply_token_ids=[2, 3],
                   logprobs=[-0.1, -0.2], adapter_version="base", latency_ms=3.0, finished=True, created_at=time.time())


def test_two_agents_racing_to_claim_exactly_one_wins(store: FeedbackStore):
    agents = [f"agent{i}" for i in range(6)]
    for _ in range(15):
        conv, _ = seed_handoff(store)
        start, won, lost = threading.Barrier(len(agents)), [], []

        def claim(agent: str) -> None:
            start.wait()
            try:
                store.handoffs.claim(conv.id, agent, agent)
                won.append(agent)
            except ConflictError as exc:
                lost.append(str(exc))

        threads = [threading.Thread(target=claim, args=(a,)) for a in agents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and len(lost) == len(agents) - 1, (won, lost)
        assert all(message == f"the conversation is with {won[0]} already" for message in lost)
        handoff = store.handoffs.get(conv.id)
        assert handoff.claimed_by == won[0] and store.conversations.get(conv.id).status == "with_agent"
        assert conv.id not in {h.conversation_id for h in store.handoffs.waiting()}
        assert conv.id in {h.conversation_id for h in store.handoffs.claimed()}


def test_while_a_person_has_the_chat_only_the_claimer_or_a_supervisor_answers_and_never_the_bot(store):
    conv, token = seed_handoff(store)
    with pytest.raises(ConflictError, match="claim it first"):
        store.handoffs.reply(conv.id, agent_turn("abe", "Hi"))
    with pytest.raises(ConflictError, match="a person answers it, not the bot"):
        store.conversations.append_bot(conv.id, model_turn("I can help!"))
    assert store.conversations.append_customer(conv.id, token, "Hello? Anyone there?").index == 4
    store.handoffs.claim(conv.id, "abe", "Abe")
    with pytest.raises(ForbiddenError, match="with abe, not with ben"):
        store.handoffs.reply(conv.id, agent_turn("ben", "Hi, Ben here"))
    with pytest.raises(ConflictError, match="with abe already"):
        store.handoffs.claim(conv.id, "ben", "Ben")
    assert store.handoffs.reply(conv.id, agent_turn("abe", "Hi, Abe here")).index == 5
    assert store.handoffs.reply(conv.id, agent_turn("ada", "Supervisor here"), supervisor=True).index == 6
    with pytest.raises(ConflictError, match="a person answers it"):
        store.conversations.append_bot(conv.id, model_turn("Me again"))
    roles = [(t.role, getattr(t, "agent_id", None)) for t in store.conversations.turns(conv.id)]
    assert roles == [("user", None), ("assistant", None), ("user", None), ("assistant", None), ("user", None),
                     ("agent", "abe"), ("agent", "ada")]
    with pytest.raises(ForbiddenError):
        store.handoffs.transfer_to_bot(conv.id, "ben")
    store.handoffs.transfer_to_bot(conv.id, "abe")
    assert store.conversations.get(conv.id).status == "open"
    assert store.conversations.append_bot(conv.id, model_turn("Back to me.")).index == 7
    with pytest.raises(ConflictError, match="claim it first"):
        store.handoffs.reply(conv.id, agent_turn("abe", "Still here"))


def test_every_move_is_announced_and_the_follow_sees_turns_and_statuses(store: FeedbackStore):
    conv, token = seed_handoff(store)
    changes = store.handoffs.follow(conv.id, after=3, idle_s=0.2)
    first = next(changes)
    assert first.conversation.status == "waiting_for_agent" and first.handoff.reason == "customer_asked"
    store.handoffs.claim(conv.id, "abe", "Abe")
    store.handoffs.reply(conv.id, agent_turn("abe", "Hi, I'm Abe."))
    store.conversations.append_customer(conv.id, token, "Thanks!")
    store.handoffs.resolve(conv.id, "abe")
    seen, deadline = [], time.monotonic() + 5
    while not seen or seen[-1] != ("status", "ended"):
        assert time.monotonic() < deadline, seen
        change = next(changes)
        if change is not None:
            seen.append(("turn", change.turn.text) if change.turn else ("status", change.conversation.status))
    changes.close()
    # the claim may be read together with the reply that followed it; each turn comes once, in order
    assert [s for s in seen if s[0] == "turn"] == [("turn", "Hi, I'm Abe."), ("turn", "Thanks!")]
    assert seen[-1] == ("status", "ended") and ("status", "waiting_for_agent") not in seen


def test_resolving_ends_the_chat_queues_it_for_experts_and_puts_it_in_the_feedback_log(store: FeedbackStore):
    conv, _ = seed_handoff(store, claimed_by="abe", replies=("It left our depot this morning.",))
    before = store.feedback.watermark()
    assert store.handoffs.resolve(conv.id, "abe") == "ended"
    ended = store.conversations.get(conv.id)
    assert ended.status == "ended" and ended.ended_at is not None
    handoff = store.handoffs.get(conv.id)
    assert (handoff.resolved_by, handoff.ended_at) == ("abe", None) and handoff.resolved_at >= handoff.claimed_at
    assert store.feedback.watermark() == before + 1
    assert conv.id in {c.id for c in store.annotations.queue(offset=0, limit=50).conversations}
    with pytest.raises(ConflictError, match="nothing to resolve"):
        store.handoffs.resolve(conv.id, "abe")


def test_ending_while_waiting_closes_the_handoff_and_nobody_can_claim_it(store: FeedbackStore):
    conv, token = seed_handoff(store)
    store.conversations.end(conv.id, token)
    assert store.handoffs.get(conv.id).ended_at is not None and store.handoffs.waiting() == []
    with pytest.raises(ConflictError, match="not waiting for an agent"):
        store.handoffs.claim(conv.id, "abe", "Abe")
    with pytest.raises(ConflictError, match="has ended"):
        store.handoffs.request(conv.id, "customer_button", True, notice())


def test_with_nobody_available_the_chat_stays_with_the_bot_and_an_email_becomes_a_contact_request(store):
    conv, token = seed_handoff(store, available=False)
    assert store.conversations.get(conv.id).status == "open" and store.handoffs.waiting() == []
    assert store.conversations.append_bot(conv.id, model_turn("Meanwhile: it ships tomorrow.")).index == 4
    store.handoffs.leave_contact(conv.id, "sam@example.com")
    (request,) = store.handoffs.contact_requests()
    assert (request.conversation_id, request.contact_email, request.available) == (conv.id, "sam@example.com", False)
    store.handoffs.request(conv.id, "reasks", False, notice())  # asking again keeps the address left
    assert [h.contact_email for h in store.handoffs.history(conv.id)] == ["sam@example.com", "sam@example.com"]
    assert store.handoffs.resolve(conv.id, "abe") == "answered"
    assert store.handoffs.contact_requests() == [] and store.conversations.get(conv.id).status == "open"
    with pytest.raises(ConflictError, match="already answered"):
        store.handoffs.leave_contact(conv.id, "sam@example.com")
    plain = seed_conversation(store, ended=False)
    with pytest.raises(ConflictError, match="ask for a person first"):
        store.handoffs.leave_contact(plain.id, "sam@example.com")


def test_presence_expires_without_a_heartbeat_and_away_is_not_online(store: FeedbackStore):
    store.handoffs.set_presence("abe", "online", ttl_s=1)
    store.handoffs.set_presence("ben", "online")
    assert store.handoffs.agents_online() == ["abe", "ben"] and store.handoffs.presence("abe") == "online"
    store.handoffs.set_presence("ben", "away")
    assert store.handoffs.agents_online() == ["abe"] and store.handoffs.presence("ben") == "away"
    time.sleep(1.2)
    assert store.handoffs.agents_online() == [] and store.handoffs.presence("abe") == "offline"


def test_the_export_carries_each_handoff_on_the_bot_turns_before_it(store: FeedbackStore):
    conv, token = store.conversations.start("base")
    say = lambda text: store.conversations.append_customer(conv.id, token, text)  # noqa: E731
    say("Where is my order?")                                      # 0
    store.conversations.append_bot(conv.id, model_turn("Try the shop."))            # 1
    say("That doesn't answer my question.")                         # 2
    store.conversations.append_bot(conv.id, model_turn("It may be lost."))          # 3
    say("Can I talk to a person?")                                  # 4
    store.handoffs.request(conv.id, "customer_asked", True, notice())  # 5
    store.handoffs.claim(conv.id, "abe", "Abe")
    store.handoffs.reply(conv.id, agent_turn("abe", "It left our depot today: tracking is in your email."))  # 6
    say("Great, and returns?")                                      # 7
    store.handoffs.reply(conv.id, agent_turn("abe", "The bot can help with that."))  # 8
    store.handoffs.transfer_to_bot(conv.id, "abe")
    say("How do I return boots?")                                   # 9
    store.conversations.append_bot(conv.id, model_turn("Send them back."))          # 10
    say("I want a human again")                                     # 11
    store.handoffs.request(conv.id, "customer_asked", False, notice("Nobody is available."))  # 12
    store.conversations.end(conv.id, token)
    store.ratings.rate(conv.id, token, 2)

    exported = {t.turn.index: t for t in store.feedback.for_conversation(conv.id)}
    assert sorted(exported) == [1, 3, 10]  # the notices are no samples; agents' turns are not the policy's
    first, led, again = exported[1].handoff, exported[3].handoff, exported[10].handoff
    assert (first.reason, first.led_to_handoff, first.agent_reply) == ("customer_asked", False, "")
    assert (led.led_to_handoff, led.agent_reply, led.agent_id) == (
        True, "It left our depot today: tracking is in your email.", "abe")
    assert (again.led_to_handoff, again.agent_reply) == (True, "")  # nobody was available to reply
    assert exported[10].customer_text == "How do I return boots?" and exported[3].csat == 2
    with_notices = store.feedback.for_conversation(conv.id, include_fallbacks=True)
    assert [t.turn.index for t in with_notices] == [1, 3, 5, 10, 12] and with_notices[2].handoff is None


def test_a_handed_off_conversation_reaches_the_export_without_a_rating(store: FeedbackStore):
    conv, _ = seed_handoff(store, claimed_by="abe", replies=("Here is your tracking link.",))
    before = store.feedback.watermark()
    store.handoffs.transfer_to_bot(conv.id, "abe")
    exported, reached = store.feedback.export(after=before)
    assert reached == before + 1 and [(t.conversation_id, t.csat) for t in exported] == [(conv.id, None)]
    assert exported[0].handoff.agent_reply == "Here is your tracking link."
