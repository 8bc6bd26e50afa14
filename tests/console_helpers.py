"""Shared pieces of the console tests: accounts, signing in, seeded conversations (handed-off ones too),
a real adapter."""

from __future__ import annotations

import re
import time

from flask.testing import FlaskClient

from feedback_store import FeedbackStore
from feedback_store.records import AdapterVersion, AgentTurn, BotTurn, Conversation
from loopdesk.config import Settings

PASSWORD = "correct horse battery"
ACCOUNTS = {"erin": "expert", "emil": "expert", "abe": "agent", "ben": "agent", "otto": "operator", "ada": "admin"}
DISPLAY_NAMES = {"abe": "Abe from Northwind", "ben": "Ben"}


def add_accounts(store: FeedbackStore) -> None:
    for name, role in ACCOUNTS.items():
        store.users.add(name, role, PASSWORD, DISPLAY_NAMES.get(name, ""))


def sign_in(client: FlaskClient, name: str) -> str:
    """Sign ``client`` in through the JSON login; return the session's CSRF token."""
    response = client.post("/api/expert/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["role"] == ACCOUNTS[name]
    return response.json["csrf_token"]


def login_form_token(client: FlaskClient, path: str = "/login") -> str:
    """The CSRF token the login page's form carries for ``client``'s (anonymous) session."""
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def seed_conversation(store: FeedbackStore, csat: int | None = None, version: str = "base",
                      customer_text: str = "Where is my order?", reply: str = "It ships tomorrow.",
                      ended: bool = True) -> Conversation:
    """A conversation with one customer turn (0) and one bot turn (1), ended and rated if asked."""
    conv, token = store.conversations.start(version)
    store.conversations.append_customer(conv.id, token, customer_text)
    store.conversations.append_bot(conv.id, BotTurn(
        index=0, text=reply, context=f"<|user|>{customer_text}<|assistant|>", prompt_token_ids=[1, 2, 3],
        reply_token_ids=[4, 5], logprobs=[-0.5, -1.0], adapter_version=version, latency_ms=12.0,
        finished=True, created_at=time.time()))
    if ended:
        store.conversations.end(conv.id, token)
    if csat is not None:
        store.ratings.rate(conv.id, token, csat, "")
    return store.conversations.get(conv.id)


def register_record(store: FeedbackStore, version: str | None = None, path: str = "/nonexistent",
                    metrics: dict | None = None) -> AdapterVersion:
    """Register an adapter record only (its files are not there: a bot refuses to serve it)."""
    now = time.time()
    return store.adapters.register(AdapterVersion(
        version=version or store.adapters.next_version(), path=path, sha256="0" * 64, base_model="test",
        metrics=metrics or {}, created_at=now, updated_at=now))


def register_real_adapter(store: FeedbackStore, settings: Settings, metrics: dict | None = None) -> AdapterVersion:
    """A LoRA adapter of the test-size base model written in the released directory format (in the test's
    folder of the adapters directory, ``adapters_home``), then registered."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.adapter_helpers import adapters_home, write_adapter

    version = store.adapters.next_version()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(settings.base_model_ref)
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=2, target_modules=["q_proj", "v_proj"]))
    out_dir = adapters_home(store)
    sha = write_adapter(peft_model, out_dir / version, version, settings.base_model_ref)
    now = time.time()
    return store.adapters.register(AdapterVersion(
        version=version, path=str(out_dir / version), sha256=sha, base_model=settings.base_model_ref,
        metrics=metrics or {}, created_at=now, updated_at=now))


def notice(text: str = "I'm passing you to a member of our team.", version: str = "base") -> BotTurn:
    """The bot's notice of a handoff, as the bot logs it."""
    return BotTurn(index=0, text=text, context="", prompt_token_ids=[], reply_token_ids=[], logprobs=[],
                   adapter_version=version, latency_ms=0.1, finished=True, created_at=time.time(), source="handoff")


def seed_handoff(store: FeedbackStore, claimed_by: str | None = None, replies: tuple[str, ...] = (),
                 ended: bool = False, available: bool = True, rated: int | None = None) -> tuple[Conversation, str]:
    """A conversation (one exchange with the bot, as ``seed_conversation``) handed to a person; claimed by
    ``claimed_by`` with its ``replies`` when given, then ended by the customer and rated if asked.
    Returns it and its customer token."""
    conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "Where is my order?")
    store.conversations.append_bot(conv.id, BotTurn(
        index=0, text="It ships tomorrow.", context="<|user|>Where is my order?<|assistant|>",
        prompt_token_ids=[1, 2, 3], reply_token_ids=[4, 5], logprobs=[-0.5, -1.0], adapter_version="base",
        latency_ms=12.0, finished=True, created_at=time.time()))
    store.conversations.append_customer(conv.id, token, "Can I talk to a person?")
    store.handoffs.request(conv.id, "customer_asked", available, notice())
    if claimed_by:
        store.handoffs.claim(conv.id, claimed_by, DISPLAY_NAMES.get(claimed_by, claimed_by))
        for text in replies:
            store.handoffs.reply(conv.id, AgentTurn(index=0, agent_id=claimed_by,
                                                    agent_name=DISPLAY_NAMES.get(claimed_by, claimed_by),
                                                    text=text, created_at=time.time()))
    if ended:
        store.conversations.end(conv.id, token)
    if rated is not None:
        store.ratings.rate(conv.id, token, rated)
    return store.conversations.get(conv.id), token


def sign_in_page(page, url: str, path: str, name: str) -> None:
    """In a Playwright ``page``: open a console page, get sent to the login form, sign in, land back on it."""
    from playwright.sync_api import expect

    page.goto(url.rstrip("/") + path)
    expect(page.get_by_role("form", name="Sign in")).to_be_visible()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")
