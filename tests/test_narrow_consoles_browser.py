"""The consoles on a phone, in real headless Chromium over real HTTP (real Redis, no model): at 375 px (and
the operator console at 320 px too) no view scrolls sideways, tables stack their rows, and every button
stays on the screen."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Page, expect

from feedback_store import FeedbackStore
from harness.serving import serve
from loopdesk.config import load_settings
from tests.console_helpers import (
    PASSWORD,
    add_accounts,
    register_record,
    seed_conversation,
    seed_handoff,
)
from tests.web_helpers import (
    GENEROUS_LIMIT,
    assert_no_sideways_scroll,
    sign_in_page,
    started_app,
)

pytestmark = pytest.mark.browser

PHONE, SMALL_PHONE = 375, 320
LONG_METRICS = {"rm_eval_accuracy": 0.8123, "held_out_reward_delta": 0.12345, "kl_to_reference": 0.4876,
                "gate_passed": True, "ppo_steps": 12, "expert_view_reward_after_training": -0.25}


@pytest.fixture(scope="module")
def site(data_dir: Path) -> Iterator[tuple[FeedbackStore, str]]:
    """(store, base URL): the app over real HTTP with accounts, two adapters with long metrics, rated and
    handed-off conversations, a schedule, a queued run with progress, and a help article."""
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"n{uuid.uuid4().hex[:12]}",
                             rate_limit_per_ip=GENEROUS_LIMIT, rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    active = register_record(store, metrics=LONG_METRICS)
    register_record(store, metrics={**LONG_METRICS, "rm_eval_accuracy": 0.7, "kl_to_reference": 0.9})
    store.adapters.promote(active.version, "phone layout test")
    for csat in (2, 4, 5):
        seed_conversation(store, csat=csat, version=active.version)
    seed_handoff(store, claimed_by="abe", replies=("It left our warehouse this morning.",), ended=True, rated=3)
    seed_handoff(store)
    store.schedules.add("0 3 * * 1-5")
    run = store.training.enqueue_round("console")
    for step in range(4):
        store.runs.report(run.id, stage="ppo", step=step, reward_mean=0.1 * step, kl=0.01 * step,
                          policy_loss=0.3, held_out_reward=0.2)
    store.knowledge.create("refunds", "Refunds: when do I get my money back?",
                           "Refunds reach the original payment method within 5 working days.", by="ada")
    with started_app(settings, store) as app, serve(app) as url:
        yield store, url.rstrip("/")


def phone_page(new_page, width: int) -> Page:
    page = new_page()
    page.set_viewport_size({"width": width, "height": 800})
    return page


@pytest.mark.parametrize("width", [PHONE, SMALL_PHONE])
def test_every_view_of_the_operator_console_fits_a_phone(site, new_page, width):
    _, url = site
    page = phone_page(new_page, width)
    sign_in_page(page, url, "/operator", "otto", PASSWORD)
    expect(page.locator("#adapters tbody tr")).to_have_count(2)
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(page.locator("#csat-chart svg")).to_be_visible()
    expect(page.locator("#adapters td[data-label='Metrics']").first).to_be_visible()  # rows stack, labelled
    expect(page.locator("#adapters").get_by_role("row")).to_have_count(3)  # still a table to a screen reader
    assert_no_sideways_scroll(page, "the operator console")

    page.locator("#runs").get_by_role("button").first.click()
    expect(page.locator("#run-charts svg")).to_have_count(4)
    assert_no_sideways_scroll(page, "the operator console with a run open")

    page.get_by_role("button", name="Promote").first.click()
    expect(page.get_by_role("dialog")).to_be_visible()
    assert_no_sideways_scroll(page, "the operator console's confirmation dialog")
    page.get_by_role("button", name="Cancel").click()

    page.get_by_role("button", name="Roll back active").click()
    expect(page.get_by_label("Reason")).to_be_visible()
    assert_no_sideways_scroll(page, "the operator console's rollback dialog")


def test_the_expert_console_fits_a_phone_with_a_transcript_open(site, new_page):
    _, url = site
    page = phone_page(new_page, PHONE)
    sign_in_page(page, url, "/expert", "ada", PASSWORD)  # an admin: the longest menu
    expect(page.get_by_role("button", name="CSAT 2").first).to_be_visible()
    assert_no_sideways_scroll(page, "the expert console's queue")
    page.get_by_role("button", name="CSAT 2").first.click()
    page.get_by_label("Bot reply, turn 1").click()
    expect(page.get_by_label("Corrected reply")).to_be_visible()
    assert_no_sideways_scroll(page, "the expert console with a transcript open")


def test_the_inbox_fits_a_phone_with_a_conversation_open(site, new_page):
    _, url = site
    page = phone_page(new_page, PHONE)
    sign_in_page(page, url, "/inbox", "ada", PASSWORD)
    expect(page.locator("#waiting button").first).to_be_visible()
    assert_no_sideways_scroll(page, "the inbox")
    page.locator("#waiting button").first.click()
    expect(page.get_by_role("button", name="Claim")).to_be_visible()
    assert_no_sideways_scroll(page, "the inbox with a conversation open")


def test_the_users_page_fits_a_phone(site, new_page):
    _, url = site
    page = phone_page(new_page, PHONE)
    sign_in_page(page, url, "/admin/users", "ada", PASSWORD)
    expect(page.get_by_role("button", name="Reset password").first).to_be_visible()
    assert_no_sideways_scroll(page, "the users page")


def test_the_knowledge_console_fits_a_phone_with_an_article_open(site, new_page):
    _, url = site
    page = phone_page(new_page, PHONE)
    sign_in_page(page, url, "/knowledge", "ada", PASSWORD)
    page.locator("#kb-list button").first.click()
    expect(page.locator("#kb-history tbody tr")).to_have_count(1)
    assert_no_sideways_scroll(page, "the knowledge console with an article open")
