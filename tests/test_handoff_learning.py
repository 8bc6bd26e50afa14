"""What a handoff to a person teaches the trainer, worked by hand on a conversation stored in real Redis
and exported as the trainer reads it: the penalty on the bot turns before it, the agent's reply chosen
over the bot turn that led to it, and the same reply as a demonstration after that turn's prompt."""

from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from feedback_store import FeedbackStore
from feedback_store.records import AgentTurn, BotTurn, HandoffFeedback, TurnWithFeedback
from tests.console_helpers import notice
from trainer.baselines import Example, kto_examples, sft_examples
from trainer.config import BaselineConfig, RewardBuilderConfig, RewardModelConfig
from trainer.reward_model import PreferencePair, build_pairs
from trainer.rewards import FeedbackTurn, build_rewards
from trainer.round import feedback_turn

AGENT_REPLY = "It left our depot today: the tracking link is in your email."
FIRST_PROMPT, FIRST_REPLY = [5, 6], [7, 8]
SECOND_PROMPT, SECOND_REPLY = [5, 6, 7, 8, 9], [10, 11]


def generated(text: str, prompt: list[int], reply: list[int]) -> BotTurn:
    return BotTurn(index=0, text=text, context=f"context of {text}", prompt_token_ids=prompt, reply_token_ids=reply,
                   logprobs=[-0.5] * len(reply), adapter_version="base", latency_ms=2.0, finished=True,
                   created_at=time.time())


def agent(text: str) -> AgentTurn:
    return AgentTurn(index=0, agent_id="abe", agent_name="Abe", text=text, created_at=time.time())


def handed_off_chat(store: FeedbackStore) -> str:
    """Two bot turns, a request for a person, an agent's two replies, resolved, rated 5; an expert scored
    the second bot turn -1 (no correction)."""
    conv, token = store.conversations.start("base")
    say = lambda text: store.conversations.append_customer(conv.id, token, text)  # noqa: E731
    say("Where is my order?")                                                                    # 0
    store.conversations.append_bot(conv.id, generated("Try the shop.", FIRST_PROMPT, FIRST_REPLY))  # 1
    say("That doesn't answer my question. Where is my order?")                                  # 2
    store.conversations.append_bot(conv.id, generated("It may be lost.", SECOND_PROMPT, SECOND_REPLY))  # 3
    say("I want a real person, not a bot.")                                                      # 4
    store.handoffs.request(conv.id, "customer_asked", True, notice())                            # 5
    store.handoffs.claim(conv.id, "abe", "Abe")
    store.handoffs.reply(conv.id, agent(AGENT_REPLY))                                            # 6
    store.handoffs.reply(conv.id, agent("Anything else I can do?"))                              # 7
    store.handoffs.resolve(conv.id, "abe")
    store.ratings.rate(conv.id, token, 5)
    store.annotations.annotate(conv.id, 3, "expert1", -1)
    return conv.id


def bot_only_chat(store: FeedbackStore) -> str:
    """One bot turn, rated 5, no handoff: its reward is the CSAT alone."""
    conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "How do I return a jacket?")
    store.conversations.append_bot(conv.id, generated("Use the returns page.", [5, 20], [21]))
    store.conversations.end(conv.id, token)
    store.ratings.rate(conv.id, token, 5)
    return conv.id


def test_a_handoff_penalises_the_turns_before_it_and_its_agent_reply_is_chosen_and_imitated(store, base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    handed_off, plain = handed_off_chat(store), bot_only_chat(store)
    turns, _ = store.feedback.export()

    exported = [(t.conversation_id, t.turn.index, t.handoff) for t in turns]
    assert [(c, i, h.reason, h.led_by, h.led_to_handoff, h.agent_reply) for c, i, h in exported if h] == [
        (handed_off, 1, "customer_asked", 3, False, ""), (handed_off, 3, "customer_asked", 3, True, AGENT_REPLY)]
    assert [(c, i) for c, i, h in exported if h is None] == [(plain, 1)]

    rewards = {(r.conversation_id, r.turn_index): r.reward
               for r in build_rewards(map(feedback_turn, turns), RewardBuilderConfig())}
    # turn 1: csat 5 → 1.0, handoff -0.5 → 0.5; turn 3: 0.8 · (-1 / 2) + 0.2 · 1.0 = -0.2, handoff -0.5 → -0.7
    assert rewards == pytest.approx({(handed_off, 1): 0.5, (handed_off, 3): -0.7, (plain, 1): 1.0})

    agent_ids = tokenizer(AGENT_REPLY, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    pairs = build_pairs(turns, rewards, tokenizer, RewardModelConfig(cross_negatives=0, rated_pairs=0))
    assert [p for p in pairs if p.source == "handoff"] == [
        PreferencePair((SECOND_PROMPT, agent_ids), (SECOND_PROMPT, SECOND_REPLY), "handoff")]

    sft = sft_examples(turns, rewards, tokenizer, BaselineConfig())  # also PPO-ptx's demonstrations
    assert sorted((e.prompt, e.reply, e.source) for e in sft) == sorted([
        (SECOND_PROMPT, agent_ids, "agent"),        # the agent's first reply, after the turn that led to it
        (FIRST_PROMPT, FIRST_REPLY, "logged"),      # reward 0.5 >= sft_min_reward 0.5
        ([5, 20], [21], "logged")])
    kto = kto_examples(turns, rewards, tokenizer, BaselineConfig())
    assert Example(SECOND_PROMPT, agent_ids, True, "agent") in kto
    assert Example(SECOND_PROMPT, SECOND_REPLY, False) in kto  # the reply that led to the handoff


def test_the_penalty_is_configurable_and_reaches_unrated_turns_whatever_the_reason():
    config = RewardBuilderConfig(handoff_penalty=-0.25)
    turns = [FeedbackTurn("a", 1, handoff="customer_button"), FeedbackTurn("a", 3, csat=1, handoff="reasks"),
             FeedbackTurn("b", 1, expert_scores=[2], handoff="no_article"), FeedbackTurn("c", 1)]
    rewards = build_rewards(turns, config)
    # -0.25; -1 - 0.25 clamped to -1; 1 - 0.25; no feedback at all: left out
    assert [(r.conversation_id, r.turn_index, r.reward) for r in rewards] == [
        ("a", 1, -0.25), ("a", 3, -1.0), ("b", 1, 0.75)]
    off = build_rewards(turns, RewardBuilderConfig(handoff_penalty=0.0))
    assert [r.reward for r in off] == [0.0, -1.0, 1.0]
    for wrong in (0.5, -3.0):
        with pytest.raises(ValueError, match="handoff_penalty"):
            RewardBuilderConfig(handoff_penalty=wrong)


def test_no_demonstration_from_a_handoff_because_no_article_fitted_or_from_a_reply_equal_to_the_bots(
        base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)

    def led(reason: str, reply: str) -> TurnWithFeedback:
        return TurnWithFeedback(
            conversation_id="c", turn=generated("It ships today.", [5], [6]).model_copy(update={"index": 1}),
            customer_text="Where is my order?", csat=None, annotations=[], conversation_started_at=0.0,
            handoff=HandoffFeedback(reason=reason, requested_at=0.0, led_to_handoff=True, led_by=1,
                                    agent_reply=reply, agent_id="abe"))

    config = RewardModelConfig(cross_negatives=0, rated_pairs=0)
    turns = [led("no_article", AGENT_REPLY), led("customer_button", "It ships today."), led("reasks", "")]
    assert build_pairs(turns, {}, tokenizer, config) == []
    assert sft_examples(turns, {}, tokenizer, BaselineConfig()) == []
    asked = [led("customer_asked", AGENT_REPLY)]  # the same turn after a request for a person: a demonstration
    assert [p.source for p in build_pairs(asked, {}, tokenizer, config)] == ["handoff"]
    assert [e.source for e in sft_examples(asked, {}, tokenizer, BaselineConfig())] == ["agent"]
