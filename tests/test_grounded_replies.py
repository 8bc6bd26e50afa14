"""Replies grounded in the knowledge base (real engine on the test-size model, real Redis, the demo
shop's 14 articles): the retrieved article is in the exact context the turn logs, with its id,
version and score; an edit changes the next reply's context; a question no article fits gets the
honest decline, which the model never generated and which is never a training sample."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.handoff import decline
from bot.services import EXTENSION
from feedback_store import FeedbackStore
from feedback_store.records import BotTurn
from loopdesk.config import SettingsError, load_settings
from loopdesk.knowledge import MIN_SCORE, PASSAGE_CHARS
from loopdesk.knowledge_files import read_articles
from sim.knowledge import KNOWLEDGE_DIR
from tests.console_helpers import add_accounts, sign_in
from tests.web_helpers import (
    metric,
    parse_sse,
    running_engine,
    started_app,
    web_settings,
)

API = "/api/conversations"
IN_SCOPE = "Where is my parcel? I ordered a tent and it has not arrived."
OUT_OF_SCOPE = "What is the capital of France?"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, store, app) with the real thresholds and the demo shop's knowledge base."""
    settings = web_settings(data_dir, base_model_dir, kb_min_score=MIN_SCORE)
    store = FeedbackStore.from_settings(settings, announce=False)
    store.knowledge.import_articles(read_articles(KNOWLEDGE_DIR))
    add_accounts(store)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, app


def ask(app, text: str, stream: bool = False, conv: tuple[str, dict] | None = None):
    """(response, conversation id, auth) for one message, in a new conversation unless ``conv``."""
    client = app.test_client()
    if conv is None:
        created = client.post(API).json
        conv = created["conversation_id"], {"Authorization": f"Bearer {created['token']}"}
    headers = {**conv[1], **({"Accept": "text/event-stream"} if stream else {})}
    return client.post(f"{API}/{conv[0]}/messages", json={"text": text}, headers=headers), conv


def last_bot_turn(store: FeedbackStore, conv_id: str) -> BotTurn:
    turn = store.conversations.turns(conv_id)[-1]
    assert isinstance(turn, BotTurn)
    return turn


def test_the_defaults_are_the_tuned_retrieval_constants():
    settings = load_settings({})
    assert (settings.kb_top_k, settings.kb_min_score, settings.kb_passage_chars) == (1, MIN_SCORE, PASSAGE_CHARS)
    assert "0800 555 0199" in settings.contact_address  # the demo shop's line, as its article says
    assert "0800 555 0199" in (KNOWLEDGE_DIR / "talk-to-a-person.md").read_text()
    with pytest.raises(SettingsError, match="CONTACT_ADDRESS"):
        load_settings({"LOOPDESK_CONTACT_ADDRESS": "  "})
    with pytest.raises(SettingsError, match="KB_TOP_K"):
        load_settings({"LOOPDESK_KB_TOP_K": "0"})


def test_a_reply_sees_the_retrieved_article_and_the_turn_logs_it(web):
    settings, store, app = web
    response, (conv_id, _) = ask(app, IN_SCOPE)
    assert response.status_code == 200 and response.json["source"] == "model"
    turn = last_bot_turn(store, conv_id)
    (seen,) = turn.articles
    assert (seen.id, seen.version, seen.title) == ("order-status", 1, store.knowledge.get("order-status").title)
    assert seen.score >= MIN_SCORE
    system = turn.context.split("<|system|>", 1)[1].split("<|user|>", 1)[0]
    prompt_line, knowledge_line = system.split("\n")
    assert prompt_line and knowledge_line.startswith(f'Help article "{seen.title}" (order-status v1): ')
    assert turn.context.endswith(f"{IN_SCOPE}<|assistant|>") and turn.sampled
    assert turn.reply_token_ids and len(turn.logprobs) == len(turn.reply_token_ids)
    assert len(turn.prompt_token_ids) + settings.max_reply_tokens <= 320  # the passage was cut to fit


def test_an_edit_reaches_the_next_reply_within_two_seconds(web):
    _, store, app = web
    current = store.knowledge.get("refunds")
    new_fact = "Refunds now reach your card within 2 business days."
    store.knowledge.update("refunds", current.version, "otto", body=f"{new_fact}\n\n{current.body}")
    knowledge, started = app.extensions[EXTENSION].knowledge, time.monotonic()
    while knowledge.index.articles["refunds"].version != current.version + 1:
        assert time.monotonic() - started < 2.0, "the edit did not reach the bot's index within 2 s"
        time.sleep(0.02)
    response, (conv_id, _) = ask(app, "When do I get my money back for a refund?")
    turn = last_bot_turn(store, conv_id)
    assert response.json["source"] == "model" and [(a.id, a.version) for a in turn.articles] == [
        ("refunds", current.version + 1)]
    assert f"(refunds v{current.version + 1}): {new_fact}" in turn.context


def test_a_retired_article_is_no_longer_in_any_reply(web):
    _, store, app = web
    question = "My new jacket broke after a month, is it covered by the warranty?"
    before, (conv_id, _) = ask(app, question)
    assert [a.id for a in last_bot_turn(store, conv_id).articles] == ["warranty"]
    store.knowledge.retire("warranty", store.knowledge.get("warranty").version, "otto")
    knowledge, started = app.extensions[EXTENSION].knowledge, time.monotonic()
    while "warranty" in knowledge.index.articles:
        assert time.monotonic() - started < 2.0
        time.sleep(0.02)
    after, (conv_id, _) = ask(app, question)
    turn = last_bot_turn(store, conv_id)
    assert "warranty" not in {a.id for a in turn.articles} and "(warranty v" not in turn.context


def test_a_question_no_article_fits_gets_the_decline_without_generating(web):
    settings, store, app = web
    assert not app.extensions[EXTENSION].knowledge.retrieve(OUT_OF_SCOPE).fits
    generated = metric(app, "loopdesk_time_to_first_token_seconds_count")
    declined = metric(app, "loopdesk_replies_total", source="fallback")
    response, (conv_id, _) = ask(app, OUT_OF_SCOPE)
    assert response.status_code == 200
    assert response.json["text"] == decline(settings) == ("I'm sorry, I can't help with that here. You can reach our "
                                                          f"team at {settings.contact_address}.")
    assert response.json["source"] == "fallback" and response.json["finished"] is True
    turn = last_bot_turn(store, conv_id)
    assert (turn.source, turn.sampled, turn.text) == ("fallback", False, decline(settings))
    assert (turn.context, turn.prompt_token_ids, turn.reply_token_ids, turn.logprobs, turn.articles) == ("", [], [], [], [])
    assert metric(app, "loopdesk_time_to_first_token_seconds_count") == generated  # the model never ran
    assert metric(app, "loopdesk_replies_total", source="fallback") == declined + 1


def test_the_decline_streams_as_one_delta_then_done(web):
    settings, store, app = web
    response, (conv_id, _) = ask(app, "Tell me a joke.", stream=True)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = parse_sse(response.response)
    assert [e for e, _ in events] == ["delta", "done"]
    assert events[0][1] == {"text": decline(settings)} and events[1][1]["source"] == "fallback"
    assert events[1][1]["turn_index"] == last_bot_turn(store, conv_id).index == 1


def test_the_expert_console_shows_the_articles_a_turn_saw_and_marks_the_decline(web):
    _, store, app = web
    # the off-topic question comes first: retrieval reads the customer's last two messages, so after
    # an in-scope one it would still find that question's article (and leave the decline to the model)
    _, conv = ask(app, OUT_OF_SCOPE + " And who won the football match last night?")
    ask(app, IN_SCOPE, conv=conv)
    client = app.test_client()
    sign_in(client, "erin")
    turns = client.get(f"/api/expert/conversations/{conv[0]}").json["turns"]
    declined, grounded = [t for t in turns if t["role"] == "assistant"]
    assert grounded["source"] == "model" and [(a["id"], a["version"]) for a in grounded["articles"]] == [
        ("order-status", store.knowledge.get("order-status").version)]
    assert grounded["articles"][0]["score"] >= MIN_SCORE and grounded["articles"][0]["title"]
    assert declined["source"] == "fallback" and declined["articles"] == []
    linked = client.get(f"/api/kb/articles/order-status/versions/{grounded['articles'][0]['version']}")
    assert linked.status_code == 200 and linked.json["title"] == grounded["articles"][0]["title"]
