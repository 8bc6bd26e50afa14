"""A fallback reply (the fixed decline when no help article fits) is logged like any reply but is
never a training sample: the trainer's export leaves it out, the experts' export keeps its
annotations, and a whole round on feedback full of declines trains, gates and releases on the
model's own replies only (real Redis, the test-size model)."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from feedback_store import FeedbackStore
from feedback_store.records import BotTurn
from tests.console_helpers import add_accounts, sign_in
from tests.store_helpers import bot_turn
from tests.trainer_helpers import (
    seed_conversations,
    small_round_config,
    trainer_settings,
)
from tests.web_helpers import started_app
from trainer.round import run_round

DECLINE = "I'm sorry, I can't help with that here. You can reach our team at 0800 555 0199."


def fallback_turn() -> BotTurn:
    return BotTurn(index=0, text=DECLINE, context="", prompt_token_ids=[], reply_token_ids=[], logprobs=[],
                   adapter_version="base", latency_ms=0.2, finished=True, created_at=time.time(), source="fallback")


def declined_conversation(store: FeedbackStore, question: str = "What is the capital of France?",
                          csat: int = 1, first_answered: bool = False) -> str:
    """A conversation whose (last) reply is a decline, rated and annotated like any other."""
    conv, token = store.conversations.start("base")
    if first_answered:
        store.conversations.append_customer(conv.id, token, "Where is my order?")
        store.conversations.append_bot(conv.id, bot_turn())
    store.conversations.append_customer(conv.id, token, question)
    turn = store.conversations.append_bot(conv.id, fallback_turn())
    store.ratings.rate(conv.id, token, csat)
    store.annotations.annotate(conv.id, turn.index, "expert1", -2, tags=["unhelpful"],
                               corrected_reply="Paris, but we only sell outdoor gear.")
    store.annotations.annotate(conv.id, turn.index, "expert2", 2)  # approves the decline as it stands
    return conv.id


def test_a_fallback_turn_carries_no_context_tokens_or_articles():
    assert not fallback_turn().sampled and bot_turn().sampled and bot_turn().source == "model"
    for extra in ({"context": "<ctx>"}, {"prompt_token_ids": [1]}, {"reply_token_ids": [4], "logprobs": [-0.1]},
                  {"articles": [{"id": "refunds", "version": 1, "title": "Refunds", "score": 1.0}]}):
        with pytest.raises(ValidationError, match="fallback reply was not generated"):
            BotTurn(**{**fallback_turn().model_dump(), **extra})


def test_the_trainers_export_leaves_fallback_turns_out_and_the_experts_keeps_them(store, settings):
    only_declined = declined_conversation(store)
    mixed = declined_conversation(store, first_answered=True, csat=2)
    turns, _ = store.feedback.export()
    assert [(t.conversation_id, t.turn.index) for t in turns] == [(mixed, 1)]
    assert turns[0].turn.sampled and turns[0].csat == 2
    everything, _ = store.feedback.export(include_fallbacks=True)
    assert {(t.conversation_id, t.turn.index, t.turn.source) for t in everything} == {
        (only_declined, 1, "fallback"), (mixed, 1, "model"), (mixed, 3, "fallback")}
    assert store.feedback.for_conversation(only_declined) == []

    add_accounts(store)
    with started_app(settings, store) as app:
        client = app.test_client()
        sign_in(client, "erin")
        export = client.get("/api/expert/export.jsonl").get_data(as_text=True)
        lines = [json.loads(line) for line in export.splitlines()]
        assert sum(line["bot_reply"] == DECLINE for line in lines) == 4  # two annotations on each decline


@pytest.mark.usefixtures("one_torch_thread")
def test_a_round_on_feedback_full_of_declines_trains_on_the_models_replies_only(settings, store, tmp_path,
                                                                                base_model_dir):
    model_turns = 24
    seed_conversations(store, base_model_dir, n=model_turns)
    for i in range(6):
        declined_conversation(store, csat=1 + i % 5, first_answered=i % 2 == 0)
    answered_first = 3  # the mixed conversations' first replies are model turns too
    run = run_round(trainer_settings(settings, tmp_path, base_model_dir), store, config=small_round_config(),
                    show_progress=False)
    assert run.status == "succeeded", run.error
    assert run.metrics["episodes"] == model_turns + answered_first
    assert run.metrics["gate_contexts"] >= 1 and run.metrics["gate_passed"]
    assert store.adapters.get(run.adapter_version).status == "canary"
