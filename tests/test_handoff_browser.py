"""Handoffs in real headless Chromium: a customer's widget and an agent's inbox in two pages against the app
on a live HTTP server (real model, Redis and the demo shop's knowledge base), with no
Content-Security-Policy violation on either."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from feedback_store import FeedbackStore
from feedback_store.records import AgentTurn
from harness.serving import serve
from loopdesk.knowledge import MIN_SCORE
from loopdesk.knowledge_files import read_articles
from sim.knowledge import KNOWLEDGE_DIR
from tests.console_helpers import add_accounts, sign_in_page
from tests.web_helpers import running_engine, started_app, watch_csp, web_settings

pytestmark = pytest.mark.browser

OPEN_CHAT = "Open chat: Northwind Outfitters help"
QUESTION = "My tent has not arrived yet. Where is my parcel?"
PERSON = "Could I speak with a real human please?"
SCREENSHOTS = Path("/tmp")


@pytest.fixture(scope="module")
def site(data_dir: Path, base_model_dir: Path) -> Iterator[tuple[FeedbackStore, str]]:
    """(store, base URL) of the app with the demo shop's articles at the real threshold, over real HTTP."""
    settings = web_settings(data_dir, base_model_dir, kb_min_score=MIN_SCORE)
    store = FeedbackStore.from_settings(settings, announce=False)
    store.knowledge.import_articles(read_articles(KNOWLEDGE_DIR))
    add_accounts(store)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app, serve(app) as url:
            yield store, url


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Pages in fresh browser contexts; none may meet a Content-Security-Policy violation."""
    contexts, violations = [], []

    def open_page() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(context)
        watch_csp(context, violations)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()
    assert violations == [], "the Content-Security-Policy blocked part of a page"


@pytest.fixture
def nobody_online(site):
    for agent in ("abe", "ben", "ada"):
        site[0].handoffs.set_presence(agent, "away")


def open_widget(page: Page, url: str) -> None:
    page.goto(url)
    page.get_by_role("button", name=OPEN_CHAT).click()
    expect(page.get_by_label("Your message")).to_be_focused()


def say(page: Page, text: str) -> None:
    page.get_by_label("Your message").fill(text)
    page.get_by_label("Your message").press("Enter")
    expect(page.locator(".ld-user .ld-text").last).to_have_text(text)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled(timeout=30_000)


def conversation_id(page: Page) -> str:
    return page.evaluate(
        "JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage).find(k => k.startsWith('loopdesk:')))).id")


def wait_until_online(store: FeedbackStore, agent: str) -> None:
    deadline = time.monotonic() + 10
    while agent not in store.handoffs.agents_online():
        assert time.monotonic() < deadline, f"{agent}'s inbox page sent no heartbeat"
        time.sleep(0.1)


def test_a_customer_asks_for_a_person_an_agent_claims_and_replies_live_and_the_customer_rates(site, new_page):
    store, url = site
    agent = new_page()
    sign_in_page(agent, url, "/inbox", "abe")
    wait_until_online(store, "abe")

    customer = new_page()
    open_widget(customer, url)
    say(customer, QUESTION)
    expect(customer.locator(".ld-bot .ld-text")).to_have_count(1)
    say(customer, PERSON)
    expect(customer.locator(".ld-notice")).to_have_text(
        "Waiting for a person… You can keep writing: they will read it here.")
    expect(customer.get_by_role("button", name="Talk to a person")).to_be_hidden()
    conv_id = conversation_id(customer)

    waiting = agent.locator("#waiting button", has_text=PERSON)
    expect(waiting).to_be_visible(timeout=10_000)
    expect(waiting).to_contain_text("asked for a person")
    waiting.click()
    expect(agent.get_by_label("Customer, turn 2")).to_contain_text(PERSON)
    agent.get_by_role("button", name="Claim").click()
    expect(customer.locator(".ld-notice")).to_have_text("You are chatting with Abe from Northwind from our team.")
    expect(agent.locator("#claimed button", has_text="you")).to_be_visible(timeout=10_000)

    reply = "Hi, I'm Abe. Your tent left our depot this morning; the tracking link is in your email."
    agent.get_by_label("Your reply").fill(reply)
    agent.get_by_role("button", name="Send reply").click()
    answer = customer.locator(".ld-agent").last
    expect(answer.locator(".ld-text")).to_have_text(reply, timeout=1000)  # live, within a second
    expect(answer.locator(".ld-name")).to_have_text("Abe from Northwind (our team)")
    expect(customer.locator(".ld-typing")).to_be_hidden()

    say(customer, "Thanks, that helps!")
    expect(agent.locator(".cn-user .cn-text").last).to_have_text("Thanks, that helps!")
    customer.screenshot(path=str(SCREENSHOTS / "loopdesk-widget-with-agent.png"))
    agent.screenshot(path=str(SCREENSHOTS / "loopdesk-inbox.png"))

    agent.get_by_role("button", name="Resolve").click()
    expect(customer.get_by_role("form", name="How did we do?")).to_be_visible()
    customer.locator("label[for=ld-score-5]").click()
    customer.get_by_role("button", name="Send rating").click()
    expect(customer.get_by_text("Thank you for your feedback!")).to_be_visible()
    conv = store.conversations.get(conv_id)
    assert (conv.status, conv.csat, conv.handoffs) == ("ended", 5, 1)
    assert [t.role for t in store.conversations.turns(conv_id)] == [
        "user", "assistant", "user", "assistant", "agent", "user"]


def test_a_reload_keeps_the_conversation_its_status_and_the_live_replies(site, new_page):
    store, url = site
    store.handoffs.set_presence("ben", "online")
    customer = new_page()
    open_widget(customer, url)
    customer.get_by_role("button", name="Talk to a person").click()
    expect(customer.locator(".ld-notice")).to_contain_text("Waiting for a person")
    conv_id = conversation_id(customer)
    store.handoffs.claim(conv_id, "ben", "Ben")
    expect(customer.locator(".ld-notice")).to_have_text("You are chatting with Ben from our team.")
    store.handoffs.reply(conv_id, AgentTurn(index=0, agent_id="ben", agent_name="Ben", text="Ben here, hello!",
                                            created_at=time.time()))
    expect(customer.locator(".ld-agent .ld-text")).to_have_text(["Ben here, hello!"])

    customer.reload()
    customer.get_by_role("button", name=OPEN_CHAT).click()
    expect(customer.locator(".ld-notice")).to_have_text("You are chatting with Ben from our team.")
    expect(customer.locator(".ld-agent .ld-text")).to_have_text(["Ben here, hello!"])
    expect(customer.locator(".ld-bot .ld-text")).to_have_count(1)  # the bot's notice of the handoff
    store.handoffs.reply(conv_id, AgentTurn(index=0, agent_id="ben", agent_name="Ben", text="Still with you.",
                                            created_at=time.time()))
    expect(customer.locator(".ld-agent .ld-text")).to_have_text(["Ben here, hello!", "Still with you."])

    store.handoffs.transfer_to_bot(conv_id, "ben")
    expect(customer.locator(".ld-notice")).to_have_text("You are back with our assistant.")
    expect(customer.get_by_role("button", name="Talk to a person")).to_be_visible()
    say(customer, QUESTION)
    expect(customer.locator(".ld-bot .ld-text")).to_have_count(2)  # the bot answers again
    store.handoffs.set_presence("ben", "away")


def test_with_nobody_online_the_widget_says_so_and_takes_an_email_address(site, new_page, nobody_online):
    store, url = site
    customer = new_page()
    open_widget(customer, url)
    customer.get_by_role("button", name="Talk to a person").click()
    notice = customer.locator(".ld-notice")
    expect(notice).to_have_text("Nobody from our team is available right now. Leave your email address and they "
                                "will reply by email.")
    expect(customer.locator(".ld-bot .ld-text").last).to_contain_text("Nobody from our team is available")
    form = customer.get_by_role("form", name="Leave your email address")
    expect(form).to_be_visible()
    customer.get_by_role("textbox", name="Your email address").fill("sam@example.com")
    customer.get_by_role("button", name="Send address").click()
    expect(notice).to_have_text("Thank you. Our team will reply to sam@example.com.")
    expect(form).to_be_hidden()
    (request,) = [h for h in store.handoffs.contact_requests() if h.conversation_id == conversation_id(customer)]
    assert request.contact_email == "sam@example.com" and not request.available
    customer.reload()
    customer.get_by_role("button", name=OPEN_CHAT).click()
    expect(notice).to_contain_text("They will reply to sam@example.com.")
    say(customer, QUESTION)  # the bot still answers meanwhile
    expect(customer.locator(".ld-bot .ld-text")).to_have_count(2)


def test_the_widget_stops_following_a_chat_erased_while_it_waits_for_a_person(site, new_page):
    store, url = site
    store.handoffs.set_presence("ben", "online")
    customer = new_page()
    follows: list[str] = []
    customer.on("request", lambda request: follows.append(request.url) if "/events" in request.url else None)
    open_widget(customer, url)
    # erase only once a follow is live (its stream answered 200): else, on a slow machine, the first
    # follow may start after the erasure and be the refused one
    with customer.expect_response(lambda r: "/events" in r.url and r.status == 200, timeout=30_000):
        customer.get_by_role("button", name="Talk to a person").click()
    expect(customer.locator(".ld-notice")).to_contain_text("Waiting for a person")
    store.handoffs.set_presence("ben", "away")

    store.erasure.erase(conversation_id(customer))

    expect(customer.locator(".ld-status")).to_have_text("This conversation is no longer stored.")
    expect(customer.locator(".ld-notice")).to_be_hidden()
    asked = len(follows)
    time.sleep(3)  # a refused follow was retried every 2 s
    assert len(follows) == asked >= 2  # the first follow, and the one the erasure's end of it led to
    assert customer.evaluate("Object.keys(sessionStorage).filter(k => k.startsWith('loopdesk:'))"
                             ".map(k => sessionStorage.getItem(k))") == ["{}"]
