"""Shared pieces of the console tests: accounts, signing in, seeded conversations, a real adapter."""

from __future__ import annotations

import re
import time

from flask.testing import FlaskClient

from feedback_store import FeedbackStore
from feedback_store.records import AdapterVersion, BotTurn, Conversation
from loopdesk.config import Settings

PASSWORD = "correct horse battery"
ACCOUNTS = {"erin": "expert", "emil": "expert", "otto": "operator", "ada": "admin"}


def add_accounts(store: FeedbackStore) -> None:
    for name, role in ACCOUNTS.items():
        store.users.add(name, role, PASSWORD)


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
