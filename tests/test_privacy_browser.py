"""The widget in real headless Chromium: it sends the page without its query string and fragment (the
server would drop them too), and what the customer types is stored masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, expect

from feedback_store import FeedbackStore
from harness.serving import serve
from tests.web_helpers import running_engine, started_app, web_settings

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(data_dir: Path, base_model_dir: Path) -> Iterator[tuple[FeedbackStore, str]]:
    settings = web_settings(data_dir, base_model_dir)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine, started_app(settings, store, engine) as app, serve(app) as url:
        yield store, url


def test_the_widget_sends_the_page_without_query_or_fragment(site, browser: Browser):
    store, url = site
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{url}?email=jane%40doe.example&token=s3cret#order-42")
        page.get_by_role("button", name="Open chat: Northwind Outfitters help").click()
        page.get_by_label("Your message").fill("Please email jane@doe.example about my boots")
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/conversations")) as start:
            page.get_by_label("Your message").press("Enter")
        sent = json.loads(start.value.post_data)
        expect(page.locator(".ld-bot .ld-text")).to_have_count(1, timeout=30_000)
        conv_id = page.evaluate("JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage)"
                                ".find(k => k.startsWith('loopdesk:')))).id")
    finally:
        context.close()
    assert sent == {"meta": {"page": url.rstrip("/") + "/"}}  # the widget itself leaves them out
    assert store.conversations.get(conv_id).meta == sent["meta"]
    assert store.conversations.turns(conv_id)[0].text == "Please email [email] about my boots"
