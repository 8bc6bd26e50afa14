"""Handoffs over the HTTP APIs (real engine on the test-size model, real Redis, the demo shop's knowledge
base at the real threshold): the three automatic triggers and the button, messages while a person has
the chat, nobody online and outside business hours, the email left for a reply, reload, a rating after
a handoff, the inbox's rules, and an agent's reply reaching the customer's live stream within 1 s."""

from __future__ import annotations

import json
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from bot.handoff import NOBODY, SORRY, WAITING, decline
from feedback_store import FeedbackStore
from harness.serving import serve
from loopdesk.articles import VersionedArticle
from loopdesk.business_hours import DAY_NAMES, DAYS
from loopdesk.knowledge import MIN_SCORE, KnowledgeIndex, without_reask
from loopdesk.knowledge_files import read_articles
from sim.company import load_company
from sim.customers import REASKS
from sim.knowledge import KNOWLEDGE_DIR
from tests.console_helpers import PASSWORD, add_accounts, sign_in
from tests.store_helpers import keys_mentioning
from tests.web_helpers import (
    metric,
    parse_sse,
    running_engine,
    started_app,
    web_settings,
)

API = "/api/conversations"
IN_SCOPE = "My tent has not arrived yet. Where is my parcel?"
OUT_OF_SCOPE = "Who won the football world cup in 1966?"
PERSON = "Could I speak with a real human please?"


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(settings, store, engine, app) with the real threshold, the demo shop's articles and every role."""
    settings = web_settings(data_dir, base_model_dir, kb_min_score=MIN_SCORE)
    store = FeedbackStore.from_settings(settings, announce=False)
    store.knowledge.import_articles(read_articles(KNOWLEDGE_DIR))
    add_accounts(store)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield settings, store, engine, app


@pytest.fixture
def agents_online(web):
    """Abe online for the test (and nobody else); away afterwards."""
    handoffs = web[1].handoffs
    handoffs.set_presence("ben", "away")
    handoffs.set_presence("abe", "online")
    yield
    handoffs.set_presence("abe", "away")


@pytest.fixture
def nobody_online(web):
    for agent in ("abe", "ben", "ada"):
        web[1].handoffs.set_presence(agent, "away")


class Customer:
    """One conversation through the chat API, as the widget drives it."""

    def __init__(self, app):
        self.client = app.test_client()
        created = self.client.post(API).json
        self.id, self.auth = created["conversation_id"], {"Authorization": f"Bearer {created['token']}"}

    def say(self, text: str, stream: bool = False):
        headers = {**self.auth, **({"Accept": "text/event-stream"} if stream else {})}
        return self.client.post(f"{API}/{self.id}/messages", json={"text": text}, headers=headers)

    def call(self, method: str, path: str = "", **kwargs):
        return self.client.open(f"{API}/{self.id}{path}", method=method, headers=self.auth, **kwargs)


def agent_client(app, name: str):
    client = app.test_client()
    return client, {"X-CSRF-Token": sign_in(client, name)}


def test_no_intent_phrasing_or_its_reasks_asks_for_a_person_and_every_person_question_does():
    index = KnowledgeIndex([VersionedArticle(**a.model_dump(), version=1) for a in read_articles(KNOWLEDGE_DIR)])

    def top(text: str) -> str | None:
        hits = index.search(without_reask(text), k=1, min_score=MIN_SCORE)
        return hits[0].id if hits else None

    company = load_company()
    openings = [q for intent in company.intents for q in (*intent.phrasings, *intent.held_out)]
    assert len(openings) == 442
    assert [q for q in openings if top(q) == "talk-to-a-person"] == []
    assert [r + q for q in openings for r in REASKS if top(r + q) == "talk-to-a-person"] == []
    person = [a for a in read_articles(KNOWLEDGE_DIR) if "handoff" in a.tags]
    assert [a.id for a in person] == ["talk-to-a-person"]
    for question in ("Are you a bot?", PERSON, "I'd like to chat with a real person, not a bot",
                     "I want to talk to a member of your support team", "This is useless, can a human help me?"):
        assert top(question) == "talk-to-a-person", question


@pytest.mark.parametrize("phrasing", [PERSON, "I want to talk to a member of your support team",
                                      "This is useless, can a human help me?"])
def test_asking_for_a_person_in_words_the_escalation_article_covers_hands_off_without_the_model(
        web, agents_online, phrasing):
    _, store, _, app = web
    customer = Customer(app)
    assert customer.say(IN_SCOPE).json["source"] == "model"
    generated = metric(app, "loopdesk_time_to_first_token_seconds_count")
    reply = customer.say(phrasing).json
    assert (reply["status"], reply["source"], reply["text"]) == ("waiting_for_agent", "handoff", WAITING)
    assert reply["handoff"] == {"reason": "customer_asked", "available": True, "back": "", "agent_name": "",
                                "contact_email": ""}
    assert metric(app, "loopdesk_time_to_first_token_seconds_count") == generated  # the model never ran
    assert store.conversations.get(customer.id).status == "waiting_for_agent"
    assert customer.id in {h.conversation_id for h in store.handoffs.waiting()}


def test_a_question_no_article_fits_goes_to_a_person(web, agents_online):
    store = web[1]
    customer = Customer(web[3])
    events = parse_sse(customer.say(OUT_OF_SCOPE, stream=True).response)
    assert [e for e, _ in events] == ["delta", "done"] and events[0][1]["text"] == SORRY + WAITING
    done = events[1][1]
    assert (done["source"], done["status"], done["handoff"]["reason"]) == ("fallback", "waiting_for_agent", "no_article")
    assert store.handoffs.get(customer.id).turn_index == done["turn_index"] == 1


def test_the_second_reask_goes_to_a_person_and_the_count_restarts_after_a_transfer_back(web, agents_online):
    _, store, _, app = web
    customer = Customer(app)
    assert customer.say(IN_SCOPE).json["source"] == "model"
    assert customer.say("That doesn't answer my question. Where is my parcel?").json["source"] == "model"
    reply = customer.say("Sorry, I don't understand. When will my tent arrive?").json
    assert (reply["status"], reply["handoff"]["reason"], reply["source"]) == ("waiting_for_agent", "reasks", "handoff")
    store.handoffs.claim(customer.id, "abe", "Abe")
    store.handoffs.transfer_to_bot(customer.id, "abe")
    assert customer.say("Please just answer: where is my order?").json["source"] == "model"
    assert customer.say("Sorry, I don't understand. Where is it?").json["handoff"]["reason"] == "reasks"


def test_while_a_person_has_the_chat_messages_wait_for_them_and_the_bot_stays_quiet(web, agents_online):
    _, store, _, app = web
    customer = Customer(app)
    asked = customer.call("POST", "/handoff")
    assert asked.status_code == 200 and asked.json["status"] == "waiting_for_agent"
    assert asked.json["notice"]["text"] == WAITING and asked.json["handoff"]["reason"] == "customer_button"
    again = customer.call("POST", "/handoff").json
    assert again["status"] == "waiting_for_agent" and again["notice"] is None  # nothing asked twice
    for stream in (False, True):
        queued = customer.say("Is anybody there?", stream=stream)
        assert queued.status_code == 202 and queued.mimetype == "application/json"
        assert queued.json == {"conversation_id": customer.id, "turn_index": queued.json["turn_index"],
                               "status": "waiting_for_agent"}
    assert [t.role for t in store.conversations.turns(customer.id)] == ["assistant", "user", "user"]
    assert customer.call("POST", "/end").json["status"] == "ended"
    assert customer.call("POST", "/handoff").status_code == 409
    assert Customer(app).client.post(f"{API}/{customer.id}/handoff").status_code == 401
    assert customer.client.post(f"{API}/{customer.id}/handoff",
                                headers={"Authorization": "Bearer wrong"}).status_code == 403


def test_with_nobody_online_the_bot_says_so_keeps_answering_and_takes_an_email(web, nobody_online):
    settings, store, _, app = web
    customer = Customer(app)
    reply = customer.say(PERSON).json
    assert reply["status"] == "open" and reply["handoff"]["available"] is False and reply["handoff"]["back"] == ""
    assert reply["text"] == NOBODY.format(back="", contact=settings.contact_address.rstrip("."))
    assert "they will reply by email" in reply["text"]
    assert customer.id not in {h.conversation_id for h in store.handoffs.waiting()}
    assert customer.say(IN_SCOPE).json["source"] == "model"  # the bot carries on meanwhile
    no_fit = Customer(app).say(OUT_OF_SCOPE).json
    assert (no_fit["text"], no_fit["status"], no_fit["handoff"]["available"]) == (decline(settings), "open", False)
    for bad in ("not an address", "a@b", "x@y.c"):
        refused = customer.call("POST", "/contact", json={"email": bad})
        assert refused.status_code == 422 and "email" in refused.json["error"]["message"]
    left = customer.call("POST", "/contact", json={"email": "sam@example.com"})
    assert left.status_code == 200 and left.json["text"] == "Thank you. Our team will reply to sam@example.com."
    assert customer.call("GET").json["handoff"]["contact_email"] == "sam@example.com"
    inbox, csrf = agent_client(app, "abe")
    requests_ = inbox.get("/api/inbox/conversations").json["contact_requests"]
    assert [(r["conversation_id"], r["contact_email"], r["asked"]) for r in requests_ if
            r["conversation_id"] == customer.id] == [(customer.id, "sam@example.com", PERSON)]
    assert inbox.post(f"/api/inbox/conversations/{customer.id}/resolve", headers=csrf).json["outcome"] == "answered"


def test_outside_business_hours_the_bot_says_when_the_team_is_back(web, agents_online):
    settings, store, engine, _ = web
    today = datetime.now(timezone.utc).weekday()
    closed = settings.replace(business_hours=f"{DAYS[(today + 3) % 7]} 09:00-10:00 UTC")
    with started_app(closed, store, engine) as app:
        customer = Customer(app)
        reply = customer.call("POST", "/handoff").json
        back = f"{DAY_NAMES[(today + 3) % 7]} at 09:00 (UTC time)"
        assert reply["status"] == "open" and reply["handoff"] == {
            "reason": "customer_button", "available": False, "back": back, "agent_name": "", "contact_email": ""}
        assert reply["notice"]["text"].startswith(f"Nobody from our team is available in this chat right now; they are "
                                                  f"back {back}. Leave your email address")
        assert customer.call("GET").json["handoff"]["back"] == back


def test_the_transcript_restores_the_status_the_agents_name_and_their_replies(web, agents_online):
    _, store, _, app = web
    customer = Customer(app)
    customer.say(PERSON)
    inbox, csrf = agent_client(app, "abe")
    assert inbox.post(f"/api/inbox/conversations/{customer.id}/claim", headers=csrf).status_code == 200
    sent = inbox.post(f"/api/inbox/conversations/{customer.id}/messages", json={"text": "Hi, Abe here."}, headers=csrf)
    assert sent.status_code == 201 and sent.json["agent_name"] == "Abe from Northwind"
    transcript = customer.call("GET").json
    assert transcript["status"] == "with_agent" and transcript["handoff"]["agent_name"] == "Abe from Northwind"
    assert [(t["role"], t["agent_name"]) for t in transcript["turns"]] == [
        ("user", None), ("assistant", None), ("agent", "Abe from Northwind")]


def test_the_inbox_lists_the_oldest_first_and_only_the_claimer_answers(web, agents_online):
    _, store, _, app = web
    first, second = Customer(app), Customer(app)
    first.say(PERSON)
    second.call("POST", "/handoff")
    abe, abe_csrf = agent_client(app, "abe")
    ben, ben_csrf = agent_client(app, "ben")
    ada, ada_csrf = agent_client(app, "ada")
    listed = abe.get("/api/inbox/conversations").json
    ids = [h["conversation_id"] for h in listed["waiting"]]
    assert ids.index(first.id) < ids.index(second.id) and listed["available"] and "abe" in listed["agents_online"]
    assert next(h for h in listed["waiting"] if h["conversation_id"] == first.id)["asked"] == PERSON
    detail = abe.get(f"/api/inbox/conversations/{first.id}").json
    assert [t["role"] for t in detail["turns"]] == ["user", "assistant"] and detail["turns"][1]["source"] == "handoff"
    assert detail["handoffs"][0]["reason"] == "customer_asked"
    assert abe.post(f"/api/inbox/conversations/{first.id}/claim", headers=abe_csrf).status_code == 200
    taken = ben.post(f"/api/inbox/conversations/{first.id}/claim", headers=ben_csrf)
    assert taken.status_code == 409 and "with abe already" in taken.json["error"]["message"]
    assert ben.post(f"/api/inbox/conversations/{first.id}/messages", json={"text": "Me!"},
                    headers=ben_csrf).status_code == 403
    assert ben.post(f"/api/inbox/conversations/{first.id}/resolve", headers=ben_csrf).status_code == 403
    assert ada.post(f"/api/inbox/conversations/{first.id}/messages", json={"text": "A supervisor here."},
                    headers=ada_csrf).status_code == 201
    empty = abe.post(f"/api/inbox/conversations/{first.id}/messages", json={"text": "   "}, headers=abe_csrf)
    assert empty.status_code == 422
    not_claimed = abe.post(f"/api/inbox/conversations/{second.id}/messages", json={"text": "Hi"}, headers=abe_csrf)
    assert not_claimed.status_code == 409 and "claim it first" in not_claimed.json["error"]["message"]
    went = abe.put("/api/inbox/presence", json={"status": "away"}, headers=abe_csrf).json
    assert went["status"] == "away" and "abe" not in went["agents_online"]


def test_a_rating_after_a_handoff_counts_for_the_handed_off_csat(web, agents_online):
    _, store, _, app = web
    customer = Customer(app)
    assert customer.say(IN_SCOPE).json["source"] == "model"
    customer.say(PERSON)
    abe, csrf = agent_client(app, "abe")
    abe.post(f"/api/inbox/conversations/{customer.id}/claim", headers=csrf)
    abe.post(f"/api/inbox/conversations/{customer.id}/messages", json={"text": "It arrives tomorrow."}, headers=csrf)
    resolved = abe.post(f"/api/inbox/conversations/{customer.id}/resolve", headers=csrf).json
    assert resolved["outcome"] == "ended" and resolved["handoff"]["resolved_by"] == "abe"
    assert customer.call("GET").json["status"] == "ended"
    rated = customer.call("POST", "/rating", json={"score": 5, "comment": "Abe sorted it"})
    assert rated.status_code == 200 and store.conversations.get(customer.id).csat == 5
    otto = app.test_client()
    sign_in(otto, "otto")
    base = otto.get("/api/operator/handoffs?days=1").json["versions"]["base"]
    assert base["csat_handed_off"]["n"] >= 1 and base["handed_off"] >= 1
    assert 0 < base["handoff_rate"]["rate"] <= 1 and base["handoff_rate"]["lo"] <= base["handoff_rate"]["rate"]
    text = otto.get("/metrics").get_data(as_text=True)
    assert "loopdesk_handoffs_total{available=\"yes\",reason=\"customer_asked\"}" in text


def test_an_agents_reply_is_masked_and_the_customer_erases_the_chat_from_the_inbox_too(web, agents_online):
    _, store, _, app = web
    customer = Customer(app)
    customer.say(PERSON)
    abe, csrf = agent_client(app, "abe")
    inbox = f"/api/inbox/conversations/{customer.id}"
    abe.post(f"{inbox}/claim", headers=csrf)
    sent = abe.post(f"{inbox}/messages", json={"text": "Mail abe.smith@northwind.example or call 020 7946 0958."},
                    headers=csrf)
    assert sent.status_code == 201 and sent.json["text"] == "Mail [email] or call [phone]."
    assert customer.say("Mine is sam.lee@example.com").status_code == 202
    turns = customer.call("GET").json["turns"]
    assert [t["text"] for t in turns[-2:]] == ["Mail [email] or call [phone].", "Mine is [email]"]

    assert customer.call("DELETE").status_code == 204

    counters = store.keys.rate_limits()  # the message rate limit's timestamps, gone after its one-minute window
    assert {k for k in keys_mentioning(store, customer.id) if not k.startswith(counters)} == {store.keys.erased()}
    listed = abe.get("/api/inbox/conversations").json
    assert customer.id not in {h["conversation_id"] for part in ("waiting", "claimed", "contact_requests")
                               for h in listed[part]}
    assert abe.get(inbox).status_code == 404 and customer.call("GET", "/events").status_code == 404
    assert abe.post(f"{inbox}/messages", json={"text": "Hello?"}, headers=csrf).status_code == 404


def read_events(response: requests.Response, into: queue.Queue) -> None:
    """Put (arrival time, event, data) for each server-sent event of a streamed response."""
    buffer = ""
    for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
            if "event" in fields:
                into.put((time.monotonic(), fields["event"], json.loads(fields["data"])))
    into.put((time.monotonic(), "closed", {}))


def test_an_agents_reply_reaches_the_customers_live_stream_within_a_second(web, agents_online):
    settings, store, engine, app = web
    with serve(app) as url:
        created = requests.post(f"{url}api/conversations", timeout=10).json()
        conv_id, auth = created["conversation_id"], {"Authorization": f"Bearer {created['token']}"}
        requests.post(f"{url}api/conversations/{conv_id}/handoff", headers=auth, timeout=10).raise_for_status()
        agent = requests.Session()
        csrf = {"X-CSRF-Token": agent.post(f"{url}api/expert/login", json={"name": "abe", "password": PASSWORD},
                                           timeout=10).json()["csrf_token"]}
        inbox = f"{url}api/inbox/conversations/{conv_id}"
        assert requests.get(f"{url}api/conversations/{conv_id}/events", timeout=10).status_code == 401
        stream = requests.get(f"{url}api/conversations/{conv_id}/events?after=0", headers=auth, stream=True,
                              timeout=30)
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        events: queue.Queue = queue.Queue()
        threading.Thread(target=read_events, args=(stream, events), daemon=True).start()
        assert events.get(timeout=5)[1:] == ("status", {"status": "waiting_for_agent", "handoff": {
            "reason": "customer_button", "available": True, "back": "", "agent_name": "", "contact_email": ""}})
        agent.post(f"{inbox}/claim", headers=csrf, timeout=10).raise_for_status()
        _, event, data = events.get(timeout=5)
        assert (event, data["status"], data["handoff"]["agent_name"]) == ("status", "with_agent", "Abe from Northwind")
        delays = []
        for text in ("Hi, I'm Abe.", "Your parcel left our depot this morning.", "Anything else?"):
            sent = time.monotonic()
            agent.post(f"{inbox}/messages", json={"text": text}, headers=csrf, timeout=10).raise_for_status()
            arrived, event, data = events.get(timeout=5)
            assert (event, data["role"], data["text"], data["agent_name"]) == ("turn", "agent", text,
                                                                            "Abe from Northwind")
            delays.append(arrived - sent)
        assert max(delays) < 1.0, delays
        requests.post(f"{url}api/conversations/{conv_id}/messages", json={"text": "Thanks!"}, headers=auth,
                      timeout=10).raise_for_status()  # the customer's own messages are not echoed back
        agent.post(f"{inbox}/transfer", headers=csrf, timeout=10).raise_for_status()
        assert events.get(timeout=5)[1:] == ("status", {"status": "open", "handoff": {
            "reason": "customer_button", "available": True, "back": "", "agent_name": "Abe from Northwind",
            "contact_email": ""}})
        assert events.get(timeout=5)[1] == "closed"  # back with the bot: the stream ends
        stream.close()
