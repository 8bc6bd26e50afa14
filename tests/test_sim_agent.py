"""Simulated customers asking for a person and the simulated agent answering them through the inbox's
JSON API: real HTTP against the real bot (test-size model, real Redis, the demo shop's knowledge base)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from feedback_store import FeedbackStore
from harness.serving import local_bot, serve
from loopdesk.articles import VersionedArticle
from loopdesk.config import load_settings
from loopdesk.knowledge import MIN_SCORE, KnowledgeIndex, without_reask
from loopdesk.knowledge_files import read_articles
from loopdesk.pii import mask_pii
from sim.agents import Answered, SimulatedAgent
from sim.client import ChatClient, InboxAPI
from sim.company import load_company
from sim.customers import (PERSON_REQUESTS, REASKS, Customer, CustomerConfig, SimulatedCustomer, answered,
                           make_customers, stars)
from sim.knowledge import KNOWLEDGE_DIR
from sim.oracle import create_oracle_app
from sim.rubric import conversation_score
from sim.simulate import run_customers, summarize

COMPANY = load_company()
PASSWORD = "correct horse battery"


def test_every_request_for_a_person_retrieves_the_escalation_article_in_every_personas_words():
    articles = read_articles(KNOWLEDGE_DIR)
    index = KnowledgeIndex([VersionedArticle(**a.model_dump(), version=1) for a in articles])
    escalation = {a.id for a in articles if "handoff" in a.tags}
    assert escalation == {"talk-to-a-person"}
    missed = []
    for request in PERSON_REQUESTS:
        for persona in COMPANY.personas:
            body = request.lower().rstrip("?.!") if persona.lowercase else request
            for dressed in (f"{p}{body}{s}" for p in persona.prefixes for s in persona.suffixes):
                hits = index.search(without_reask(dressed), k=1, min_score=MIN_SCORE)
                if not hits or hits[0].id not in escalation:  # what bot.handoff.reason_to_hand_off checks
                    missed.append(dressed)
    assert missed == []


def test_who_asks_for_a_person_is_drawn_apart_so_the_other_draws_stay_those_of_the_seed():
    never = make_customers(COMPANY, 40, CustomerConfig(ask_person_share=0.0), seed=7)
    always = make_customers(COMPANY, 40, CustomerConfig(ask_person_share=1.0), seed=7)
    some = make_customers(COMPANY, 40, CustomerConfig(ask_person_share=0.5), seed=7)
    plain = lambda c: (c.intent.name if c.intent else None, c.persona.name, c.opening, c.reask,  # noqa: E731
                       c.follow_up, c.rates, c.noise)
    assert list(map(plain, never)) == list(map(plain, always)) == list(map(plain, some))
    assert not any(c.asks_person for c in never) and all(c.asks_person for c in always)
    assert 5 < sum(c.asks_person for c in some) < 35
    assert {c.person_request for c in some} == {c.person_request for c in always}  # the wording: its own draws
    with pytest.raises(ValueError, match="ask_person_share"):
        CustomerConfig(ask_person_share=1.5)


def test_a_request_for_a_person_the_bot_answers_itself_is_counted_unheeded():
    wrong = COMPANY.intent("returns").phrasings[0]  # a customer about its order, asking about returns by mistake
    customer = Customer(COMPANY.intent("order_status"), COMPANY.personas[0], opening=wrong, reask=wrong,
                        follow_up=None, rates=True, noise=0.0, asks_person=True, person_request=PERSON_REQUESTS[0])
    with serve(create_oracle_app(COMPANY)) as url:  # a stand-in that answers every message, never a person
        result = SimulatedCustomer(COMPANY, ChatClient(url)).chat(customer)
    assert not result.error and result.judgements[0].off_topic  # asked at once, without a re-ask
    assert (result.reasks, result.asked_person, result.unheeded, result.handoff) == (0, 1, 1, "")
    assert len(result.replies) == 2 and summarize([result]).handoffs.unheeded_requests == 1


@pytest.fixture(scope="module")
def bot(data_dir: Path, base_model_dir: Path):
    """(base URL, store) of the real bot over HTTP, with an agent account for the simulated agent."""
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"a{uuid.uuid4().hex[:12]}",
                             base_model=str(base_model_dir), max_reply_tokens=12)
    with local_bot(settings) as url:
        store = FeedbackStore.from_settings(settings, announce=False)
        store.users.add("sim-agent", "agent", PASSWORD, "Sam from Northwind")
        yield url, store


@pytest.fixture
def agent(bot):
    api = InboxAPI(bot[0])
    api.login("sim-agent", PASSWORD)
    yield SimulatedAgent(COMPANY, api, reply_delay_s=0.2, poll_s=0.05)
    api.close()


def asking(intent_name: str, opening: int = 1) -> Customer:
    """A customer who asks for a person when the bot fails it (phrasing 0 of order_status, "Where is my order?",
    fits no article at the real threshold: the bot would hand off on its own)."""
    intent = COMPANY.intent(intent_name)
    return Customer(intent, COMPANY.personas[0], opening=intent.phrasings[opening],
                    reask=REASKS[0] + intent.phrasings[opening + 1], follow_up=None, rates=True, noise=0.0,
                    asks_person=True, person_request=PERSON_REQUESTS[1])


def test_a_customer_the_bot_failed_asks_for_a_person_gets_the_canonical_answer_from_the_agent_and_rates(bot, agent):
    url, store = bot
    customer = asking("order_status")
    intent = customer.intent
    with agent.on_duty():
        assert "sim-agent" in store.handoffs.agents_online()
        result = SimulatedCustomer(COMPANY, ChatClient(url), CustomerConfig(agent_wait_s=20)).chat(customer)
    assert store.handoffs.presence("sim-agent") == "away" and agent.errors == []

    assert not result.error and result.judgements and not answered(result.judgements[-1]), \
        "the test-size model should not have answered"
    assert (result.handoff, result.asked_person, result.unheeded) == ("customer_asked", 1, 0)
    assert result.agent_replies == [intent.canonical_reply] and answered(result.agent_judgements[0])
    persona = customer.persona
    view = conversation_score(result.judgements + result.agent_judgements, result.reasks + 1,
                              patience=persona.patience, flattery_bias=persona.flattery_bias)
    assert result.rating == stars(view, 0.0)  # the agent's right answer beside the bot's misses and the asking
    assert result.rubric == conversation_score(result.judgements, result.reasks + 1)  # the bot's part alone

    conv = store.conversations.get(result.conversation_id)
    assert conv.status == "ended" and conv.csat == result.rating and conv.handoffs == 1
    turns = store.conversations.turns(conv.id)
    assert [t.role for t in turns[-3:]] == ["user", "assistant", "agent"]
    assert turns[-3].text == customer.person_request and turns[-1].text == intent.canonical_reply
    assert turns[-1].agent_name == "Sam from Northwind" and store.handoffs.get(conv.id).resolved_by == "sim-agent"
    assert agent.answered == [Answered(conv.id, intent.name, False, intent.canonical_reply)]
    # what the trainer reads: the agent's reply on the bot turn that led to the handoff
    led = [t for t in store.feedback.for_conversation(conv.id) if t.handoff and t.handoff.led_to_handoff]
    assert [(t.turn.index, t.handoff.agent_reply) for t in led] == [(turns[-3].index - 1, intent.canonical_reply)]


def test_asking_customers_are_all_handed_off_and_with_nobody_online_they_rate_the_bots_part(bot, agent):
    url, store = bot
    config = CustomerConfig(ask_person_share=1.0, leave_share=0.0, follow_up_share=0.0, agent_wait_s=20)
    with agent.on_duty():
        results = run_customers(url, COMPANY, 4, concurrency=2, config=config, seed=11, progress=False)
    stats = summarize(results).handoffs
    assert not [r.error for r in results if r.error] and stats.person_requests >= 1
    assert stats.unheeded_requests == 0 and stats.handoffs == 4 and stats.handoff_rate == 1.0
    assert sum(r.handoff == "customer_asked" for r in results) == stats.person_requests  # the others: no article
    assert stats.resolution_rate == 0.0  # every chat was handed off
    assert {a.conversation_id for a in agent.answered} == {r.conversation_id for r in results}
    # the agent's replies reach the customer PII masked, the shop's own phone number included (complaints)
    assert all(r.agent_replies == [mask_pii(COMPANY.intent(r.intent).canonical_reply)] for r in results)

    alone = SimulatedCustomer(COMPANY, ChatClient(url), CustomerConfig(agent_wait_s=20)).chat(asking("returns"))
    assert not alone.error and (alone.handoff, alone.unheeded, alone.agent_replies) == ("customer_asked", 0, [])
    conv = store.conversations.get(alone.conversation_id)
    assert conv.status == "ended" and conv.csat == alone.rating == stars(
        conversation_score(alone.judgements, alone.reasks + 1, patience=COMPANY.personas[0].patience), 0.0)
    assert store.conversations.turns(conv.id)[-1].text.startswith("Nobody from our team is available")
