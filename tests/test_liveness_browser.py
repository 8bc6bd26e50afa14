"""The operator console in real headless Chromium over real HTTP (real Redis, no model) says whether a
worker and a scheduler are alive and why a queued run waits: no worker at all, or behind the run a live
worker is running; a worker that stopped beating shows as stale."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect

from feedback_store import FeedbackStore
from harness.serving import serve
from loopdesk.config import load_settings
from tests.console_helpers import PASSWORD, add_accounts
from tests.web_helpers import GENEROUS_LIMIT, sign_in_page, started_app
from trainer.jobs import WAITING

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(data_dir: Path) -> Iterator[tuple[FeedbackStore, str]]:
    """(store, base URL): the app over real HTTP with console accounts; heartbeats go stale after 2 s."""
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"l{uuid.uuid4().hex[:12]}",
                             rate_limit_per_ip=GENEROUS_LIMIT, rate_limit_login=GENEROUS_LIMIT,
                             heartbeat_interval_s=0.5, heartbeat_stale_s=2.0)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    with started_app(settings, store) as app, serve(app) as url:
        yield store, url.rstrip("/")


def test_the_console_says_no_worker_is_alive_and_a_queued_run_waits_for_one(site, new_page):
    store, url = site
    queued = store.training.enqueue_round("console")
    page = new_page()
    sign_in_page(page, url, "/operator", "otto", PASSWORD)
    processes = page.locator("#processes")
    expect(processes).to_contain_text("No worker alive: runs will wait until one starts (loopdesk worker).")
    expect(processes).to_contain_text("No scheduler alive: schedules do not fire and the canary is not decided "
                                      "until one starts (loopdesk scheduler).")
    row = page.locator("#runs tbody tr", has_text=queued.id)
    expect(row).to_contain_text("No worker alive: it waits until one starts (start one with: loopdesk worker)")
    row.get_by_role("button", name=queued.id).click()
    expect(page.locator("#run-summary")).to_contain_text("queued (no worker alive: it waits until one starts")


def test_the_console_names_the_run_a_live_worker_runs_and_a_dead_worker_as_stale(site, new_page):
    store, url = site
    running = store.training.enqueue_round("console")
    store.training.queue.remove(f"{store.keys.prefix}-{running.id}")  # the worker has taken its job
    store.runs.start(running.id, 0)
    queued = store.training.enqueue_round("schedule:nightly")
    page = new_page()
    with store.heartbeats.start("worker", WAITING) as worker:
        worker.set(f"running run {running.id}", run_id=running.id)
        sign_in_page(page, url, "/operator", "otto", PASSWORD)
        me = f"on {socket.gethostname()} (pid {os.getpid()})"
        expect(page.locator("#processes")).to_contain_text(f"Worker {worker.id} {me}: alive, beat ")
        expect(page.locator("#processes")).to_contain_text(f" ago, running run {running.id}")
        expect(page.locator("#processes")).not_to_contain_text("No worker alive")
        expect(page.locator("#runs tbody tr", has_text=queued.id)).to_contain_text(
            f"Waiting behind run {running.id}, which worker {worker.id} {me} is running")
    store.heartbeats.beat(worker.record.model_copy(update={"last_beat": time.time() - 30}))  # it died instead
    page.reload()
    expect(page.locator("#processes .cn-stale")).to_have_text(
        f"Worker {worker.id} {me}: stale, no heartbeat for 30 s (stopped or stuck; it was running run {running.id})")
    expect(page.locator("#processes")).to_contain_text("No worker alive")
    expect(page.locator("#runs tbody tr", has_text=queued.id)).to_contain_text(
        "No worker alive (the last one was heard from 30 s ago)")
