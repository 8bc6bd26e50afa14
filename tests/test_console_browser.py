"""The consoles in real headless Chromium against the app on a live HTTP server, real model and Redis."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from feedback_store import FeedbackStore
from feedback_store.records import BotTurn
from harness.serving import serve
from tests.console_helpers import (
    PASSWORD,
    add_accounts,
    register_real_adapter,
    seed_conversation,
)
from tests.web_helpers import (
    GENEROUS_LIMIT,
    running_engine,
    started_app,
    watch_csp,
    web_settings,
)

pytestmark = pytest.mark.browser

SCREENSHOTS = Path("/tmp")
HOSTILE = '<img src=x onerror="window.__pwned = 1"> where is my <b>order</b>?'


@pytest.fixture(scope="module")
def site(data_dir: Path, base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(settings, store, engine, base URL) of the app served over real HTTP, with accounts."""
    settings = web_settings(data_dir, base_model_dir, rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    with running_engine(settings, store) as engine, started_app(settings, store, engine) as app, serve(app) as url:
        yield settings, store, engine, url


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Pages in fresh contexts; they must run without a Content-Security-Policy violation."""
    contexts, csp_violations = [], []

    def open_page() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        watch_csp(context, csp_violations)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()
    assert csp_violations == [], "the Content-Security-Policy blocked part of a console page"


def sign_in(page: Page, url: str, path: str, name: str) -> None:
    """Open a console page, get sent to the login form, sign in, land back on the page."""
    page.goto(url.rstrip("/") + path)
    expect(page.get_by_role("form", name="Sign in")).to_be_visible()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")


def open_bot_turn(page: Page, url: str, conv_id: str):
    sign_in(page, url, "/expert", "erin")
    page.get_by_role("button", name="CSAT 1").first.click()
    turn = page.get_by_label("Bot reply, turn 1")
    expect(turn).to_be_visible()
    assert conv_id in page.url
    return turn


def test_expert_annotates_a_turn_with_a_correction_and_finds_it_saved_after_reload(site, new_page):
    _, store, _, url = site
    conv = seed_conversation(store, csat=1, customer_text=HOSTILE, reply="We do not know.")
    page = new_page()
    turn = open_bot_turn(page, url, conv.id)
    expect(page.locator(".cn-user .cn-text")).to_have_text(HOSTILE)
    assert page.locator("#turns img, #turns b").count() == 0 and page.evaluate("window.__pwned") is None

    page.keyboard.press("2")  # score -1
    expect(turn.get_by_label("-1")).to_be_checked()
    turn.get_by_label("wrong_info").check()
    turn.get_by_label("Corrected reply").fill("Your order ships tomorrow; track it under Orders.")
    turn.get_by_label("Note").fill("Say where to look.")
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-expert-transcript.png"), full_page=True)
    turn.get_by_role("button", name="Save").click()
    expect(turn.get_by_role("status")).to_have_text("Saved ✓")

    page.reload()
    turn = page.get_by_label("Bot reply, turn 1")
    expect(turn.locator(".cn-correction")).to_have_text("Correction: Your order ships tomorrow; track it under Orders.")
    expect(turn.get_by_label("-1")).to_be_checked()
    expect(turn.get_by_label("Corrected reply")).to_have_value("Your order ships tomorrow; track it under Orders.")
    saved = store.annotations.for_conversation(conv.id)[1]
    assert [(a.expert_id, a.score, a.tags) for a in saved] == [("erin", -1, ["wrong_info"])]


def test_a_failed_save_keeps_the_typed_annotation_until_the_server_confirms(site, new_page):
    _, store, _, url = site
    conv = seed_conversation(store, csat=1)
    page = new_page()
    turn = open_bot_turn(page, url, conv.id)
    page.keyboard.press("5")
    turn.get_by_label("Corrected reply").fill("A reply worth keeping")
    page.route("**/annotations", lambda route: route.abort())
    turn.get_by_role("button", name="Save").click()
    expect(turn.get_by_role("alert")).to_contain_text("Not saved")
    assert store.annotations.for_conversation(conv.id) == {}

    page.unroute("**/annotations")
    page.reload()
    turn = page.get_by_label("Bot reply, turn 1")
    expect(turn.get_by_label("Corrected reply")).to_have_value("A reply worth keeping")
    expect(turn.get_by_label("+2")).to_be_checked()
    expect(turn.get_by_role("status")).to_contain_text("Unsaved draft restored")
    page.keyboard.press("Control+Enter")
    expect(turn.get_by_role("status")).to_have_text("Saved ✓")
    assert store.annotations.for_conversation(conv.id)[1][0].corrected_reply == "A reply worth keeping"
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('loopdesk:draft:'))") == []


def seed_history(store: FeedbackStore, versions: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rated conversations over the last four days for each version (clock moved back while seeding)."""
    import feedback_store.conversations as conversations

    now = time.time()
    for day in range(4):
        for i, version in enumerate(versions):
            then = now - (3 - day) * 86400 - 3600
            monkeypatch.setattr(conversations, "time", SimpleNamespace(time=lambda: then))
            for k in range(5):
                seed_conversation(store, csat=min(5, 2 + (k + day + i * 2) % 4), version=version)
    monkeypatch.undo()


def seed_run(store: FeedbackStore) -> str:
    run = store.runs.create({"lr": 1e-3}, trigger="console")
    store.runs.start(run.id, 0)
    for step in range(12):
        store.runs.report(run.id, stage="ppo", step=step, reward_mean=0.1 * step - 0.3, kl=0.02 * step,
                          policy_loss=0.5 / (step + 1), value_loss=0.8 / (step + 1), eval_reward=0.05 * step)
    return run.id


def test_operator_promotes_an_adapter_and_the_next_conversation_is_pinned_to_it(site, new_page, monkeypatch):
    settings, store, engine, url = site
    adapter = register_real_adapter(store, settings, metrics={"held_out_reward": 0.4, "kl": 0.8})
    seed_history(store, ["base", adapter.version], monkeypatch)
    run_id = seed_run(store)

    page = new_page()
    sign_in(page, url, "/operator", "otto")
    row = page.locator("#adapters").get_by_role("row").filter(has_text=adapter.version)
    expect(row).to_contain_text("candidate")
    page.get_by_role("button", name=run_id).click()
    expect(page.get_by_label("KL chart").locator("path.lc-line")).to_have_count(1)
    expect(page.locator("#csat-chart path.lc-line")).to_have_count(2)
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-operator-console.png"), full_page=True)

    row.get_by_role("button", name=f"Promote {adapter.version}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Promote {adapter.version}?")
    dialog.get_by_role("button", name="Cancel").click()
    assert store.adapters.active() == "base"
    row.get_by_role("button", name=f"Promote {adapter.version}").click()
    dialog.get_by_role("button", name="Confirm").click()
    expect(page.locator("#active-version")).to_have_text(adapter.version)
    expect(row).to_contain_text("active")
    assert store.adapters.active() == adapter.version

    deadline = time.monotonic() + 60
    while (pinned := requests.post(f"{url}api/conversations", timeout=10).json()["adapter_version"]) != adapter.version:
        assert time.monotonic() < deadline, f"new conversations still go to {pinned}"
        time.sleep(0.2)
    assert adapter.version in engine.loaded_versions()


PAYLOADS = [
    "<script>window.__pwned = 'script'</script>",
    '<img src=x onerror="window.__pwned = \'img\'">',
    '<a href="javascript:window.__pwned = \'link\'">track my order</a>',
    "</textarea><script>window.__pwned = 'textarea'</script><textarea>",
    '"><svg onload="alert(1)"></svg><iframe src="javascript:alert(2)"></iframe>',
]


def test_a_transcript_full_of_script_and_html_renders_inert_in_the_expert_console(site, new_page):
    _, store, _, url = site
    conv, token = store.conversations.start("base")
    texts = []
    for i, payload in enumerate(PAYLOADS):
        store.conversations.append_customer(conv.id, token, payload)
        reply = PAYLOADS[(i + 1) % len(PAYLOADS)]
        store.conversations.append_bot(conv.id, BotTurn(
            index=0, text=reply, context="", prompt_token_ids=[1], reply_token_ids=[2], logprobs=[-1.0],
            adapter_version="base", latency_ms=1.0, finished=True, created_at=time.time()))
        texts += [payload, reply]
    store.conversations.end(conv.id, token)
    store.ratings.rate(conv.id, token, 1, PAYLOADS[0])
    store.annotations.annotate(conv.id, 1, "erin", -1, corrected_reply=PAYLOADS[3], note=PAYLOADS[1])

    page = new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, url, "/expert", "erin")
    page.goto(f"{url.rstrip('/')}/expert#c={conv.id}")
    page.reload()
    expect(page.get_by_label("Bot reply, turn 1")).to_be_visible()
    page.wait_for_timeout(500)  # give onerror/onload handlers the chance to fire

    expect(page.locator("#turns .cn-text")).to_have_text(texts)
    expect(page.locator("#transcript-comment")).to_have_text(f"Customer's comment: {PAYLOADS[0]}")
    turn = page.get_by_label("Bot reply, turn 1")
    expect(turn.locator(".cn-correction")).to_have_text(f"Correction: {PAYLOADS[3]}")
    expect(turn.locator(".cn-note")).to_have_text(f"Note: {PAYLOADS[1]}")
    expect(turn.get_by_label("Corrected reply")).to_have_value(PAYLOADS[3])
    injected = page.evaluate("""() => ({
        elements: document.querySelectorAll('#transcript img, #transcript svg, #transcript iframe, '
                                            + '#transcript script, a[href^="javascript:"]').length,
        scripts: Array.from(document.scripts).filter(s => s.text.includes('__pwned')).length,
        pwned: window.__pwned === undefined ? null : window.__pwned,
    })""")
    assert injected == {"elements": 0, "scripts": 0, "pwned": None}
    assert dialogs == []


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait until the page's request has reached the store."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not done within {timeout_s} s: {what}"
        time.sleep(0.1)


def test_admin_adds_disables_resets_and_removes_an_account_on_the_users_page(site, new_page):
    _, store, _, url = site
    page = new_page()
    sign_in(page, url, "/admin/users", "ada")
    form = page.get_by_role("form", name="Add an account")
    form.get_by_label("Name").fill("uma")
    form.get_by_label("Role").select_option("operator")
    form.get_by_label("Password").fill("uma's first secret")
    form.get_by_role("button", name="Add").click()
    expect(page.get_by_role("status")).to_have_text("Added operator uma.")
    row = page.get_by_role("row").filter(has_text="uma")
    expect(row).to_contain_text("enabled")
    assert store.users.get("uma").role == "operator"
    page.screenshot(path=str(SCREENSHOTS / "loopdesk-users-page.png"), full_page=True)

    uma = requests.Session()
    assert uma.post(f"{url}api/expert/login", json={"name": "uma", "password": "uma's first secret"}).ok
    row.get_by_role("button", name="Disable uma").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(row).to_contain_text("disabled")
    assert store.users.get("uma").disabled and uma.get(f"{url}api/operator/runs").status_code == 401

    row.get_by_role("button", name="Reset password uma").click()
    dialog = page.get_by_role("dialog", name="New password")
    dialog.get_by_label("New password for uma").fill("uma's second secret")
    dialog.get_by_role("button", name="Set password").click()
    expect(dialog).to_be_hidden()
    eventually(lambda: store.users.authenticate("uma", "uma's second secret") is not None, "the new password is set")

    row.get_by_label("Role of uma", exact=True).select_option("admin")
    row.get_by_role("button", name="Set role of uma").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    eventually(lambda: store.users.get("uma").role == "admin", "uma is an admin")

    ada = page.get_by_role("row").filter(has_text="ada")
    ada.get_by_role("button", name="Remove ada").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert")).to_contain_text("ada is the last enabled admin")

    row.get_by_role("button", name="Remove uma").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("row").filter(has_text="uma")).to_have_count(0)
    assert "uma" not in {u.name for u in store.users.list()}


def test_signing_out_ends_the_sessions_of_the_account_in_every_browser(site, new_page):
    url = site[3]
    first, second = new_page(), new_page()
    sign_in(first, url, "/operator", "otto")
    sign_in(second, url, "/operator", "otto")
    first.get_by_role("button", name="Sign out everywhere").click()
    expect(first.get_by_role("form", name="Sign in")).to_be_visible()
    second.reload()
    expect(second.get_by_role("form", name="Sign in")).to_be_visible()
    assert "/login?next=/operator" in second.url
