"""Handoff and resolution rates and the split CSAT per adapter version, worked by hand, as the operator
console's API and ``/metrics`` show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.charts import handoffs_by_version, share_ci
from feedback_store import FeedbackStore
from feedback_store.rating_weights import WeightRule
from tests.console_helpers import add_accounts, seed_conversation, seed_handoff, sign_in
from tests.test_observability import samples
from tests.web_helpers import running_engine, started_app, web_settings


@pytest.fixture(scope="module")
def web(data_dir: Path, base_model_dir: Path):
    """(store, app) on a key prefix of the module's own, with four conversations worked by hand:
    two bot-only ones rated 5 and 2, one handed off, resolved by an agent and rated 4, one handed off
    and never rated."""
    settings = web_settings(data_dir, base_model_dir)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    seed_conversation(store, csat=5)
    seed_conversation(store, csat=2)
    conv, token = seed_handoff(store, claimed_by="abe", replies=("Sorted.",))
    store.handoffs.resolve(conv.id, "abe")
    store.ratings.rate(conv.id, token, 4)
    seed_handoff(store)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield store, app


def test_the_wilson_interval_matches_the_published_values():
    assert share_ci(0.5, 10) == {"n": 10, "rate": 0.5, "lo": 0.2366, "hi": 0.7634}
    assert share_ci(0.0, 20) == {"n": 20, "rate": 0.0, "lo": 0.0, "hi": 0.1611}
    assert share_ci(0.3, 0) == {"n": 0, "rate": None, "lo": None, "hi": None}


def test_rates_and_split_csat_worked_by_hand(web):
    store, _ = web
    (base,) = handoffs_by_version(store.conversations.recent(100), WeightRule()).items()
    version, numbers = base
    assert version == "base" and (numbers["conversations"], numbers["handed_off"], numbers["rated"]) == (4, 2, 3)
    assert numbers["handoff_rate"] == share_ci(2 / 4, 4) and numbers["handoff_rate"]["rate"] == 0.5
    # resolved by the bot: only the bot-only chat rated 5 (the 2 is too low; the 4 was handed off)
    assert numbers["resolution_rate"] == share_ci(1 / 3, 3) and numbers["resolution_rate"]["rate"] == 0.3333
    assert (numbers["csat_bot_only"]["n"], numbers["csat_bot_only"]["mean"]) == (2, 3.5)
    assert (numbers["csat_handed_off"]["n"], numbers["csat_handed_off"]["mean"]) == (1, 4.0)
    assert numbers["csat_handed_off"]["lo"] is None  # one rating: no interval


def test_the_operator_console_and_metrics_show_them(web):
    store, app = web
    client = app.test_client()
    sign_in(client, "otto")
    shown = client.get("/api/operator/handoffs?days=2")
    assert shown.status_code == 200 and shown.json["days"] == 2
    assert shown.json["versions"] == handoffs_by_version(store.conversations.recent(100), WeightRule())
    assert client.get("/api/operator/handoffs?days=0").status_code == 422
    scraped = samples(app)
    arm = (("role", "active"), ("version", "base"))
    assert scraped[("loopdesk_conversations", arm)] == 4 and scraped[("loopdesk_handed_off_conversations", arm)] == 2
    assert scraped[("loopdesk_handoff_rate", arm)] == 0.5
    assert (scraped[("loopdesk_handoff_rate_low", arm)], scraped[("loopdesk_handoff_rate_high", arm)]) == (
        share_ci(0.5, 4)["lo"], share_ci(0.5, 4)["hi"])
    assert scraped[("loopdesk_resolution_rate", arm)] == 0.3333
    assert scraped[("loopdesk_csat_split_mean", (("conversations", "bot_only"), *arm))] == 3.5
    assert scraped[("loopdesk_csat_split_mean", (("conversations", "handed_off"), *arm))] == 4.0
