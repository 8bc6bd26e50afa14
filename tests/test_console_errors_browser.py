"""The consoles in real headless Chromium over real HTTP (real Redis; no model is needed), under the
Content-Security-Policy: a refused request shows the server's own message (not a silent failure, not
"[object Object]"), its button stays disabled until the answer comes, an answer that is not JSON is
named by its status, and stored text full of HTML renders as text."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Page, Route, expect

from feedback_store import FeedbackStore
from harness.serving import serve
from loopdesk.config import load_settings
from tests.console_helpers import PASSWORD, add_accounts, seed_conversation
from tests.web_helpers import GENEROUS_LIMIT, sign_in_page, started_app

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__pwned = 1"> <b>bold</b>'


@pytest.fixture(scope="module")
def site(data_dir: Path) -> Iterator[tuple[FeedbackStore, str]]:
    """(store, base URL): the app served over real HTTP with console accounts."""
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"e{uuid.uuid4().hex[:12]}",
                             rate_limit_per_ip=GENEROUS_LIMIT, rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    with started_app(settings, store) as app, serve(app) as url:
        yield store, url.rstrip("/")



def sign_in(page: Page, url: str, path: str, name: str) -> None:
    sign_in_page(page, url, path, name, PASSWORD)


def not_injected(page: Page, scope: str) -> dict:
    return page.evaluate("""scope => ({elements: document.querySelectorAll(scope + ' img, ' + scope + ' b').length,
                                       pwned: window.__pwned === undefined ? null : window.__pwned})""", scope)


def test_a_refused_change_shows_the_servers_message_and_its_button_waits_for_the_answer(site, new_page):
    store, url = site
    page = new_page()
    sign_in(page, url, "/operator", "otto")
    held: list[Route] = []
    share = store.adapters.canary_share()
    page.route("**/api/operator/canary-share", lambda route: held.append(route))
    page.locator("#canary-share").fill("150")
    button = page.get_by_role("button", name="Set share")
    button.click()
    page.wait_for_function("() => document.getElementById('canary-share-save').disabled")
    assert len(held) == 1
    button.click(force=True)  # a second click while the first is in flight sends nothing
    held[0].continue_()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("share: Input should be less than or equal to 1")
    expect(button).to_be_enabled()
    assert len(held) == 1 and store.adapters.canary_share() == share

    page.get_by_label("Cron").fill("0 0 30 2 *")
    expect(page.locator("#cron-preview")).to_contain_text("never fires within 5 years")


def test_an_answer_that_is_not_json_is_named_by_its_status(site, new_page):
    _, url = site
    page = new_page()
    sign_in(page, url, "/operator", "otto")
    page.route("**/api/operator/train", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><body>Bad gateway</body></html>"))
    page.get_by_role("button", name="Train now").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("the server answered 502")
    assert "[object" not in alert.text_content() and "undefined" not in alert.text_content()
    expect(page.get_by_role("button", name="Train now")).to_be_enabled()


def test_a_runs_trigger_and_error_full_of_html_render_as_text_in_the_operator_console(site, new_page):
    store, url = site
    run = store.runs.create({}, trigger=HOSTILE)
    store.runs.finish(run.id, "failed", error=f"out of memory {HOSTILE}")
    page = new_page()
    sign_in(page, url, "/operator", "otto")
    row = page.locator("#runs tbody tr", has_text=run.id)
    expect(row).to_contain_text(HOSTILE)
    row.get_by_role("button", name=run.id).click()
    expect(page.locator("#run-summary")).to_contain_text(f"failed · trigger {HOSTILE}")
    expect(page.locator("#run-summary")).to_contain_text(f"error: out of memory {HOSTILE}")
    page.wait_for_timeout(300)  # give an onerror handler the chance to fire
    assert not_injected(page, ".cn-operator") == {"elements": 0, "pwned": None}


def test_the_expert_console_says_why_a_conversation_cannot_be_opened_in_place_of_the_last_one(site, new_page):
    store, url = site
    shown = seed_conversation(store, csat=1, customer_text=HOSTILE)
    gone = seed_conversation(store, csat=2)
    page = new_page()
    sign_in(page, url, "/expert", "erin")
    page.get_by_role("button", name="CSAT 1").first.click()
    expect(page.locator("#turns .cn-text").first).to_have_text(HOSTILE)
    assert shown.id in page.url and not_injected(page, "#transcript") == {"elements": 0, "pwned": None}

    store.erasure.erase(gone.id)
    page.get_by_role("button", name="CSAT 2").first.click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(f"Could not open the conversation: no conversation {gone.id!r}")
    expect(page.locator("#transcript")).to_be_hidden()
