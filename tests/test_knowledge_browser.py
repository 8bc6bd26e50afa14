"""The console's Knowledge page in real headless Chromium over real HTTP (real Redis; no model is
needed), under the Content-Security-Policy: create → edit with preview → the conflict message →
history → revert → the retrieval check, with everything the operator typed shown inert (and so in
the help centre); and an expert following a bot turn's article link to the version it saw."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from feedback_store import FeedbackStore
from feedback_store.records import ArticleRef, BotTurn
from harness.serving import serve
from loopdesk.knowledge import MIN_SCORE
from tests.console_helpers import PASSWORD, add_accounts
from tests.web_helpers import GENEROUS_LIMIT, sign_in_page, started_app, web_settings

pytestmark = pytest.mark.browser

SCREENSHOTS = Path("/tmp")
HOSTILE = '<img src=x onerror="window.__pwned = 1"> Gift cards <b>never</b> expire.'


@pytest.fixture(scope="module")
def site(data_dir: Path, base_model_dir: Path):
    """(store, base URL): the app served over real HTTP with console accounts."""
    settings = web_settings(data_dir, base_model_dir, rate_limit_login=GENEROUS_LIMIT, kb_min_score=MIN_SCORE)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    store.knowledge.create("refunds", "Refunds: when do I get my money back?",
                           "Your money is back within 5 business days.", ["refunds", "money"])
    with started_app(settings, store) as app, serve(app) as url:
        yield store, url



def sign_in(page: Page, url: str, path: str, name: str) -> None:
    sign_in_page(page, url, path, name, PASSWORD)


def test_operator_creates_edits_meets_a_conflict_and_reverts_then_checks_retrieval(site, new_page):
    store, url = site
    page = new_page()
    sign_in(page, url, "/knowledge", "otto")
    expect(page.get_by_role("button", name="Refunds: when do I get my money back? · refunds v1 · published")).to_be_visible()

    page.get_by_role("button", name="New article").click()
    editor = page.get_by_role("form", name="Article editor")
    editor.get_by_label("Id").fill("gift-cards")
    editor.get_by_label("Title").fill("Gift cards and vouchers")
    editor.get_by_label("Tags").fill("gifts, vouchers")
    editor.get_by_label("Body").fill(f"{HOSTILE}\n\nUse them **online** only.")
    editor.get_by_role("button", name="Preview").click()
    preview = page.locator("#kb-preview")
    expect(preview.locator("strong")).to_have_text("online")
    expect(preview).to_contain_text('<img src=x onerror="window.__pwned = 1">')
    assert preview.locator("img, b").count() == 0 and page.evaluate("window.__pwned") is None
    editor.get_by_role("button", name="Save").click()
    expect(page.locator("#kb-meta")).to_contain_text("gift-cards · version 1 · published")
    assert store.knowledge.get("gift-cards").updated_by == "otto"

    page.get_by_role("button", name="Edit").click()
    editor.get_by_label("Body").fill("Gift cards are valid for **3 years**.")
    editor.get_by_role("button", name="Preview").click()
    expect(preview.locator("strong")).to_have_text("3 years")
    store.knowledge.update("gift-cards", 1, "ada", body="Gift cards are valid for 2 years.")  # another operator
    editor.get_by_role("button", name="Save").click()
    alert = editor.get_by_role("alert")
    expect(alert).to_contain_text("someone else (ada) saved version 2 while you edited version 1")
    expect(editor.get_by_label("Body")).to_have_value("Gift cards are valid for **3 years**.")  # nothing lost
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-knowledge-conflict.png"), full_page=True)
    assert store.knowledge.get("gift-cards").body == "Gift cards are valid for 2 years."

    editor.get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Gift cards and vouchers · gift-cards v2 · published").click()
    history = page.locator("#kb-history")
    expect(history.get_by_role("row")).to_have_count(3)  # header, v2, v1
    expect(history.get_by_role("row").nth(1)).to_contain_text("ada")
    history.get_by_role("button", name="Revert to version 1").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page.locator("#kb-meta")).to_contain_text("gift-cards · version 3 · published")
    expect(page.locator("#kb-view")).to_contain_text('<img src=x onerror="window.__pwned = 1"> Gift cards <b>never</b>')
    assert page.locator("#kb-view img, #kb-view b").count() == 0 and page.evaluate("window.__pwned") is None
    assert store.knowledge.get("gift-cards").body == store.knowledge.get_version("gift-cards", 1).body

    started = time.monotonic()
    page.get_by_label("Customer question").fill("do gift cards expire?")
    page.get_by_role("button", name="Retrieve").click()
    results = page.locator("#kb-retrieve-results")
    expect(results.get_by_role("row").nth(1)).to_contain_text("Gift cards and vouchers (gift-cards v3)")
    assert time.monotonic() - started < 5
    expect(page.locator("#kb-retrieve-summary")).to_contain_text("index at revision")
    page.get_by_label("Customer question").fill("what is the capital of France?")
    page.get_by_role("button", name="Retrieve").click()
    expect(page.locator("#kb-retrieve-summary")).to_contain_text("the bot would not generate")
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-knowledge.png"), full_page=True)

    shop = new_page()  # the customers' help centre shows the reverted version, inert
    shop.goto(url + "help/gift-cards")
    expect(shop.get_by_role("heading", name="Gift cards and vouchers")).to_be_visible()
    expect(shop.locator(".help-body strong")).to_have_text("online")
    assert shop.locator(".help-body img, .help-body b").count() == 0 and shop.evaluate("window.__pwned") is None


def test_an_expert_follows_a_turns_article_link_to_the_version_it_saw_and_cannot_edit(site, new_page):
    store, url = site
    seen = store.knowledge.get("refunds")
    store.knowledge.update("refunds", seen.version, "otto", body="Your money is back within 3 business days.")
    conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "When do I get my money back?")
    store.conversations.append_bot(conv.id, BotTurn(
        index=0, text="Within 5 business days.", context="<ctx>", prompt_token_ids=[1], reply_token_ids=[2],
        logprobs=[-0.5], adapter_version="base", latency_ms=1.0, finished=True, created_at=time.time(),
        articles=[ArticleRef(id="refunds", version=seen.version, title=seen.title, score=2.5)]))
    store.conversations.append_customer(conv.id, token, "What is the capital of France?")
    store.conversations.append_bot(conv.id, BotTurn(
        index=0, text="I'm sorry, I can't help with that here.", context="", prompt_token_ids=[], reply_token_ids=[],
        logprobs=[], adapter_version="base", latency_ms=0.1, finished=True, created_at=time.time(), source="fallback"))
    store.conversations.end(conv.id, token)
    store.ratings.rate(conv.id, token, 1)

    page = new_page()
    sign_in(page, url, "/expert", "erin")
    page.get_by_role("button", name="CSAT 1").first.click()
    expect(page.get_by_label("Bot reply, turn 3")).to_contain_text("fallback")
    link = page.get_by_label("Bot reply, turn 1").get_by_role("link", name=seen.title)
    expect(link).to_be_visible()
    link.click()
    page.wait_for_url("**/knowledge?article=refunds&version=*")
    expect(page.locator("#kb-old-version")).to_have_text(
        f"This is version {seen.version}; the current version is {seen.version + 1}.")
    expect(page.locator("#kb-view")).to_have_text("Your money is back within 5 business days.")
    assert page.get_by_role("button", name="Edit").count() == 0 and page.get_by_role("button", name="New article").count() == 0
