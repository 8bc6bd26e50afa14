"""The widget in real headless Chromium against the app on a live HTTP server, real model and Redis."""

from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path
from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from feedback_store import FeedbackStore
from harness.serving import serve
from tests.web_helpers import parse_sse, running_engine, started_app, watch_csp, web_settings

pytestmark = pytest.mark.browser

OPEN_CHAT = "Open chat: Northwind Outfitters help"
SCREENSHOTS = Path("/tmp")
# Asked in turn until a reply arrives in more than one delta. The engine sends the tokens that piled up
# while its reader waited as one delta, so on a loaded machine a short reply can arrive whole.
STREAMED_QUESTIONS = ("Where is my order?", "How long does a refund take?", "Can I change my delivery address?")

# Records every length the newest bot bubble had, so a test can tell a streamed reply from one
# that arrived whole. Each delta replaces the bubble's text node; the observer reads every added
# node's text, so deltas handled in one task (several events in one network read) still count.
TRACK_REPLY_GROWTH = """
window.__replyLengths = [];
document.addEventListener('DOMContentLoaded', () => {
  new MutationObserver((records) => {
    for (const record of records) {
      if (!(record.target instanceof Element) || !record.target.matches('.ld-bot .ld-text')) continue;
      for (const node of record.addedNodes) {
        if (node.nodeType === Node.TEXT_NODE) window.__replyLengths.push(node.data.length);
      }
    }
  }).observe(document.body, {subtree: true, childList: true});
});
"""


@pytest.fixture(scope="module")
def site(data_dir: Path, base_model_dir: Path) -> Iterator[tuple[FeedbackStore, str]]:
    """(store, base URL) of the app served over real HTTP."""
    settings = web_settings(data_dir, base_model_dir)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine, started_app(settings, store, engine) as app, serve(app) as url:
        yield store, url


@pytest.fixture
def csp_violations() -> list[str]:
    """What the Content-Security-Policy blocked in this test's pages (none, unless a test provokes it)."""
    return []


@pytest.fixture
def new_page(browser: Browser, csp_violations: list[str]) -> Iterator[Callable[..., Page]]:
    """Open pages in fresh browser contexts (fresh sessionStorage), closed after the test; the pages
    must run without a Content-Security-Policy violation."""
    contexts = []

    def open_page(width: int = 1280, height: int = 800) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        watch_csp(context, csp_violations)
        page = context.new_page()
        page.add_init_script(TRACK_REPLY_GROWTH)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert csp_violations == [], "the Content-Security-Policy blocked part of a page"


def send_and_wait_for_reply(page: Page, text: str) -> str:
    """Type a message, press Enter and wait until the streamed reply is complete."""
    page.get_by_label("Your message").fill(text)
    page.get_by_label("Your message").press("Enter")
    bubbles = page.locator(".ld-bot .ld-text")
    count = page.locator(".ld-user").count()
    expect(page.locator(".ld-user .ld-text").last).to_have_text(text)
    expect(bubbles).to_have_count(count, timeout=30_000)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled(timeout=30_000)
    expect(page.locator(".ld-typing")).to_be_hidden()
    return bubbles.last.text_content()


def send_and_watch_stream(page: Page, text: str) -> tuple[str, list[str], list[int]]:
    """(reply shown, the texts of the deltas the server sent, the lengths the bubble had) for one message."""
    page.evaluate("window.__replyLengths = []")
    with page.expect_response(lambda r: r.url.endswith("/messages") and r.request.method == "POST") as sent:
        reply = send_and_wait_for_reply(page, text)
    events = parse_sse([sent.value.body()])
    assert events[-1][0] == "done" and events[-1][1]["text"] == reply
    shown = [n for n in page.evaluate("window.__replyLengths") if n]
    return reply, [d["text"] for e, d in events if e == "delta"], shown


def conversation_id(page: Page) -> str:
    return page.evaluate(
        "JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage).find(k => k.startsWith('loopdesk:')))).id"
    )


def test_customer_chats_sees_streamed_reply_ends_and_rates(site, new_page):
    store, url = site
    page = new_page()
    page.goto(url)
    expect(page.get_by_role("heading", name="Northwind Outfitters")).to_be_visible()
    page.get_by_role("button", name=OPEN_CHAT).click()
    expect(page.get_by_role("dialog", name="Northwind Outfitters help")).to_be_visible()
    expect(page.get_by_label("Your message")).to_be_focused()

    pieces = []
    for question in STREAMED_QUESTIONS:
        reply, deltas, shown = send_and_watch_stream(page, question)
        assert reply.strip() and "".join(deltas) == reply
        assert shown == [*accumulate(len(d) for d in deltas), len(reply)], "the bubble did not show each delta"
        pieces.append(len(deltas))
        if len(deltas) > 1:
            break
    assert max(pieces) > 1, f"no reply streamed in more than one piece: {pieces} deltas"
    conv_id = conversation_id(page)
    assert store.conversations.turns(conv_id)[-1].text == reply
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-widget-desktop.png"))

    page.get_by_role("button", name="End chat").click()
    survey = page.get_by_role("form", name="How did we do?")
    expect(survey).to_be_visible()
    expect(page.get_by_label("Your message")).to_be_hidden()
    page.locator("label[for=ld-score-4]").click()
    page.get_by_label("Comment (optional)").fill("Fast answer, thanks")
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-widget-survey.png"))
    page.get_by_role("button", name="Send rating").click()
    expect(page.get_by_text("Thank you for your feedback!")).to_be_visible()

    conv = store.conversations.get(conv_id)
    assert (conv.status, conv.csat, conv.csat_comment) == ("ended", 4, "Fast answer, thanks")


def test_widget_is_keyboard_operable_and_renders_customer_text_as_text(site, new_page):
    page = new_page()
    page.goto(site[1])
    launcher = page.get_by_role("button", name=OPEN_CHAT)
    launcher.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Your message")).to_be_focused()
    hostile = '<img src=x onerror="window.__pwned = 1"> & <b>bold</b>'
    send_and_wait_for_reply(page, hostile)
    expect(page.locator(".ld-user .ld-text").last).to_have_text(hostile)
    assert page.locator(".ld-log img, .ld-log b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert page.get_by_role("log", name="Conversation").is_visible()

    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(page.get_by_role("button", name=OPEN_CHAT)).to_be_focused()
    expect(page.get_by_role("button", name=OPEN_CHAT)).to_have_attribute("aria-expanded", "false")

    page.reload()
    page.get_by_role("button", name=OPEN_CHAT).click()
    expect(page.locator(".ld-user .ld-text")).to_have_text([hostile])


def test_an_idle_chat_offers_the_rating_and_stays_open(site, new_page):
    """Idle for the page's ``?idle=5`` seconds: the widget offers the rating without ending the chat or
    opening a closed panel; "Keep chatting" goes on with the same conversation, "Rate this chat" ends it."""
    store, url = site
    page = new_page()
    page.goto(f"{url}?idle=5")
    page.get_by_role("button", name=OPEN_CHAT).click()
    send_and_wait_for_reply(page, "Can I change my delivery address?")
    conv_id = conversation_id(page)
    page.get_by_role("button", name="Close chat", exact=True).click()
    offer = page.get_by_role("group", name="Done for now?")
    page.wait_for_function("() => !document.querySelector('.ld-offer').hidden", timeout=15_000)
    expect(page.get_by_role("dialog")).to_be_hidden()
    assert store.conversations.get(conv_id).status == "open"

    page.get_by_role("button", name=OPEN_CHAT).click()
    expect(offer).to_be_visible()
    expect(page.get_by_role("form", name="How did we do?")).to_be_hidden()
    page.get_by_role("button", name="Keep chatting").click()
    expect(offer).to_be_hidden()
    send_and_wait_for_reply(page, "And how long does delivery take?")
    assert conversation_id(page) == conv_id
    assert [t.role for t in store.conversations.turns(conv_id)] == ["user", "assistant"] * 2

    expect(offer).to_be_visible(timeout=15_000)
    page.get_by_role("button", name="Rate this chat").click()
    expect(page.get_by_role("form", name="How did we do?")).to_be_visible()
    expect(offer).to_be_hidden()
    assert store.conversations.get(conv_id).status == "ended"


def test_a_reply_lost_on_the_way_is_fetched_again_under_the_same_key(site, new_page):
    """The first POST reaches the server, which answers it, but the page never gets the answer: the widget
    retries with the same Idempotency-Key and shows the logged reply; the log has one turn pair."""
    store, url = site
    page = new_page()
    keys: list[str] = []

    def lose_the_first_answer(route) -> None:
        keys.append(route.request.headers["idempotency-key"])
        answered = route.fetch()
        if len(keys) == 1:
            assert answered.status == 200
            route.abort("connectionreset")
        else:
            route.fulfill(response=answered)

    page.route("**/api/conversations/*/messages", lose_the_first_answer)
    page.goto(url)
    page.get_by_role("button", name=OPEN_CHAT).click()
    reply = send_and_wait_for_reply(page, "Where is my order?")
    conv_id = conversation_id(page)
    turns = store.conversations.turns(conv_id)
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].text == reply
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32
    expect(page.locator(".ld-user")).to_have_count(1)
    expect(page.locator(".ld-status")).to_have_text("")


def test_widget_fills_a_mobile_screen(site, new_page):
    page = new_page(width=375, height=740)
    page.goto(site[1])
    page.get_by_role("button", name=OPEN_CHAT).click()
    send_and_wait_for_reply(page, "Do you ship to Canada?")
    box = page.get_by_role("dialog").bounding_box()
    assert box is not None and (box["x"], box["width"]) == (0, 375)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-widget-mobile.png"))


def test_widget_works_embedded_in_another_origin(site, new_page):
    """A shop on another origin includes only the script tag; the API answers it through CORS."""
    url = site[1]
    tag = (f'<script src="{url}static/widget.js" data-bot-url="{url}" data-title="Help" '
           'data-color="#7a2e8e"></script>')
    html = f"<!doctype html><html><head><title>Other shop</title></head><body><h1>Other shop</h1>{tag}</body></html>"

    def other_shop(environ: dict, start_response: Callable) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [html.encode()]

    with serve(other_shop) as shop_url:
        page = new_page()
        page.goto(shop_url.replace("127.0.0.1", "localhost"))
        page.get_by_role("button", name="Open chat: Help").click()
        assert send_and_wait_for_reply(page, "Hello, are you open on Sundays?").strip()
        assert json.loads(page.evaluate("JSON.stringify(location.origin)")) != url.rstrip("/")


def test_the_content_security_policy_blocks_code_injected_into_the_shop_page(site, new_page, csp_violations):
    """The shop's own stylesheet applies; an injected inline handler and inline script do not run."""
    page = new_page()
    page.goto(site[1])
    expect(page.locator(".swatch-moss")).to_have_css("background-color", "rgb(138, 163, 123)")
    page.evaluate("""() => {
        document.body.insertAdjacentHTML('beforeend', '<img src="/static/missing.png" onerror="window.__ran = 1">');
        const script = document.createElement('script');
        script.textContent = 'window.__ran = 2';
        document.body.append(script);
    }""")
    page.wait_for_function("() => document.querySelector('img[onerror]').complete")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__ran === undefined")
    assert len(csp_violations) == 2 and all(v.startswith("script-src") for v in csp_violations), csp_violations
    csp_violations.clear()
