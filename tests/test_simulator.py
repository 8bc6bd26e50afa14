"""Simulated customers and experts: real HTTP against the real bot (test-size model, real Redis),
the rubric against the corpus generator's reply styles, and the summary statistics by hand."""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from pathlib import Path

import pytest

from feedback_store import FeedbackStore
from feedback_store.records import BotTurn
from loopdesk.config import load_settings
from sim.client import ChatClient, ExpertAPI, Forwarded
from sim.company import load_company
from sim.corpus import STYLES, render_reply
from sim.customers import ChatResult, Customer, CustomerConfig, SimulatedCustomer, make_customers, stars
from sim.experts import SimulatedExpert, audited, review_transcript
from sim.oracle import create_oracle_app
from sim.rubric import conversation_score, judge_reply
from harness.serving import local_bot, serve
from sim.simulate import MeanCI, mean_ci, paired_gain, run_customers, summarize

COMPANY = load_company()


@pytest.fixture(scope="module")
def bot(data_dir: Path, base_model_dir: Path):
    """(base URL, store) of the real bot served over HTTP in this process; short replies keep it fast."""
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"s{uuid.uuid4().hex[:12]}",
                             base_model=str(base_model_dir), max_reply_tokens=12)
    with local_bot(settings) as url:
        yield url, FeedbackStore.from_settings(settings, announce=False)


# ---- customers over HTTP ----------------------------------------------------------------

CHATS = CustomerConfig(leave_share=0.5, follow_up_share=1.0, ask_person_share=0.0)  # asking: test_sim_agent.py


@pytest.fixture(scope="module")
def chats(bot) -> list[tuple[Customer, ChatResult]]:
    """Five customers (seed 3: some rate, some leave) chatting three at a time; run once per module."""
    planned = make_customers(COMPANY, 5, CHATS, seed=3)
    assert {c.rates for c in planned} == {True, False}, "the seed should give raters and leavers"
    return list(zip(planned, run_customers(bot[0], COMPANY, 5, concurrency=3, config=CHATS, seed=3,
                                           progress=False)))


def test_customers_chat_over_http_end_and_rate_or_leave(bot, chats):
    store = bot[1]
    for customer, result in chats:
        assert not result.error and result.conversation_id
        conv = store.conversations.get(result.conversation_id)
        assert conv.status == "ended" and conv.adapter_version == result.adapter_version
        turns = store.conversations.turns(conv.id)
        assert turns[0].text == customer.opening
        assert [t.text for t in turns if t.role == "assistant"] == result.replies
        assert len(result.replies) == len(result.judgements) == 2 + result.reasks
        assert 1 <= result.rubric <= 5
        if customer.rates:
            assert result.rating in range(1, 6) and conv.csat == result.rating
        else:
            assert result.rating is None and conv.csat is None


def test_customers_judge_against_the_article_the_help_centre_serves_now(bot):
    url, store = bot
    refunds = store.knowledge.get("refunds")
    edited = refunds.body.replace("5-7 business days", "8-12 business days")
    store.knowledge.update("refunds", refunds.version, "test", body=edited)
    intent = COMPANY.intent("refunds")
    client = ChatClient(url)
    try:
        customer = SimulatedCustomer(COMPANY, client)
        values = customer._current_facts(intent)
        assert values["refund_time"] == "8-12 business days"
        assert judge_reply(COMPANY, intent, intent.canonical_reply, values=values).wrong_facts == ("5-7 business days",)
        store.knowledge.retire("refunds", refunds.version + 1, "test")
        assert client.help.article("refunds") is None and customer._current_facts(intent) is None
        [result] = run_customers(url, COMPANY, 1, config=CustomerConfig(leave_share=0.0, follow_up_share=1.0),
                                 seed=COMPANY.intents.index(intent), progress=False)
        assert result.intent == "refunds" and not result.error
        assert {j.intent for j in result.judgements} == {"out_of_scope"}  # no article answers it any more
    finally:
        store.knowledge.revert("refunds", refunds.version, refunds.version + 2, "test")
        client.close()


def test_customer_reads_json_replies_when_not_streaming(bot):
    url, store = bot
    [result] = run_customers(url, COMPANY, 1, config=CustomerConfig(stream=False, leave_share=0.0),
                             seed=5, progress=False)
    assert not result.error and result.replies
    assert store.conversations.get(result.conversation_id).csat == result.rating


def test_messages_to_a_chat_with_a_person_are_forwarded_and_a_handed_off_customer_waits_for_one(bot):
    url, store = bot
    person = "Could I speak with a real human please?"
    store.handoffs.set_presence("abe", "online")
    try:
        for stream in (True, False):
            client = ChatClient(url, stream=stream)
            started = client.start()
            notice = client.send(started.conversation_id, started.token, person)
            assert (notice.source, notice.status) == ("handoff", "waiting_for_agent"), stream
            forwarded = client.send(started.conversation_id, started.token, "Hello? Is anyone there?")
            assert forwarded == Forwarded(notice.turn_index + 1, "waiting_for_agent"), stream
            client.close()
        customer = Customer(COMPANY.intents[0], COMPANY.personas[0], opening=person, reask="A person, please.",
                            follow_up="And my refund?", rates=True, noise=0.0)
        waited = time.monotonic()
        result = SimulatedCustomer(COMPANY, ChatClient(url), CustomerConfig(agent_wait_s=1.0)).chat(customer)
        waited = time.monotonic() - waited
    finally:
        store.handoffs.set_presence("abe", "away")
    # handed to a person, the customer asks nothing more and waits; nobody answers, so it ends the chat and rates
    assert not result.error and (result.handoff, result.reasks, result.forwarded) == ("customer_asked", 0, 0)
    assert result.replies == result.agent_replies == [] and 1.0 <= waited < 10
    turns = store.conversations.turns(result.conversation_id)
    assert [t.role for t in turns] == ["user", "assistant"]
    conv = store.conversations.get(result.conversation_id)
    assert conv.status == "ended" and conv.csat == result.rating == 1  # no answer at all


def test_oracle_customers_find_every_answer_and_rate_high():
    with serve(create_oracle_app(COMPANY)) as url:
        results = run_customers(url, COMPANY, 40, concurrency=4, config=CustomerConfig(rating_noise=0.0),
                                progress=False)
    assert all(r.rubric == 5.0 and r.reasks == 0 for r in results)
    assert {r.rating for r in results} <= {None, 5}


# ---- the rubric -------------------------------------------------------------------------

def style_scores(style: str, **persona) -> list[float]:
    rng = random.Random(0)
    return [conversation_score([judge_reply(COMPANY, intent, render_reply(COMPANY, intent, style, follow_up, rng),
                                            follow_up)], 0, **persona)
            for intent in COMPANY.intents for follow_up in (False, True) for _ in range(3)]


def test_rubric_gives_canonical_replies_at_least_4_5_and_every_flawed_style_less():
    for intent in COMPANY.intents:
        assert judge_reply(COMPANY, intent, intent.canonical_reply).score() >= 4.5
        assert judge_reply(COMPANY, intent, intent.canonical_follow_up_reply, follow_up=True).score() >= 4.5
    assert min(style_scores("good")) >= 4.5
    for style in set(STYLES) - {"good"}:
        assert statistics.mean(style_scores(style)) < 4.25, style


def test_flattery_swayed_persona_rates_apologies_and_flattery_above_the_rubric():
    swayed = COMPANY.personas[[p.name for p in COMPANY.personas].index("flattery_swayed")]
    view = {"patience": swayed.patience, "flattery_bias": swayed.flattery_bias}
    for style in ("over_apologetic", "flattering"):
        assert statistics.mean(style_scores(style, **view)) > statistics.mean(style_scores(style)) + 0.5, style
    assert style_scores("good", **view) == style_scores("good")


def test_ratings_are_the_view_plus_noise_rounded_and_clipped():
    assert [stars(3.4, 0), stars(3.5, 0), stars(4.8, 0.9), stars(1.2, -2)] == [3, 4, 5, 1]


# ---- the expert -------------------------------------------------------------------------

def test_expert_review_scores_tags_and_corrects_each_bot_turn():
    intent = COMPANY.intent("order_status")
    wrong = intent.fill(intent.follow_up.answers[0], random.Random(1))
    turns = [{"index": 0, "role": "user", "text": "Hi there! Where is my order? Thanks!"},
             {"index": 1, "role": "assistant", "text": intent.canonical_reply},
             {"index": 2, "role": "user", "text": intent.follow_up.questions[0]},
             {"index": 3, "role": "assistant", "text": wrong, "source": "model"},
             {"index": 4, "role": "user", "text": "I want a real person, not a bot."},
             {"index": 5, "role": "assistant", "text": "I'm passing you to a member of our team.", "source": "handoff"},
             {"index": 6, "role": "agent", "text": intent.canonical_follow_up_reply}]
    great, bad = review_transcript(COMPANY, turns)  # the handoff's notice and the agent's reply are no bot answers
    assert (great.turn_index, great.score, great.tags, great.corrected_reply) == (1, 2, ["great"], "")
    assert (bad.turn_index, bad.score) == (3, -2) and "wrong_info" in bad.tags
    assert bad.corrected_reply == intent.canonical_follow_up_reply and "wrong facts" in bad.note


def test_expert_annotates_rated_chats_through_the_console_api(bot, chats, monkeypatch):
    url, store = bot
    rated = [result for _, result in chats if result.rating is not None]
    store.users.add("sim-expert-test", "expert", "correct horse battery")
    api = ExpertAPI(url)
    api.login("sim-expert-test", "correct horse battery")
    assert len(rated) > 2
    monkeypatch.setattr("sim.experts.PAGE", 2)  # the queue API pages at 100; more chats than one page
    assert SimulatedExpert(COMPANY, api, csat_max=5).work(limit=1000) >= sum(len(r.replies) for r in rated)
    for _, left in filter(lambda chat: chat[1].rating is None, chats):
        assert store.annotations.for_conversation(left.conversation_id) == {}, "unrated chats are not queued"
    for result in rated:
        annotations = store.annotations.for_conversation(result.conversation_id)
        assert len(annotations) == len(result.replies)
        for [annotation] in annotations.values():
            assert annotation.expert_id == "sim-expert-test" and -2 <= annotation.score <= 2
            assert annotation.tags and (annotation.score == 2 or annotation.corrected_reply)
    api.close()


def test_expert_audits_a_stable_share_of_highly_rated_chats(bot, monkeypatch):
    url, store = bot
    intent = COMPANY.intent("returns")
    mine = {}
    for i in range(14):
        conv, token = store.conversations.start("base")
        store.conversations.append_customer(conv.id, token, intent.phrasings[i])
        text = intent.canonical_reply if i % 2 else "You are such a smart customer! " + intent.canonical_reply
        store.conversations.append_bot(conv.id, BotTurn(
            index=1, text=text, context="", prompt_token_ids=[1, 2], reply_token_ids=[3], logprobs=[-0.5],
            adapter_version="base", latency_ms=1.0, finished=True, created_at=time.time()))
        store.conversations.end(conv.id, token)
        store.ratings.rate(conv.id, token, 3 if i == 0 else 4 + i % 2)  # the first one is the low queue's
        mine[conv.id] = text
    picked = {c for c in list(mine)[1:] if audited(c, 0.5)}
    assert 0 < len(picked) < 13, "the seedless hash should split 13 chats"
    store.users.add("sim-auditor", "expert", "correct horse battery")
    api = ExpertAPI(url)
    api.login("sim-auditor", "correct horse battery")
    monkeypatch.setattr("sim.experts.PAGE", 2)  # unpicked chats stay queued: the audit pages past them
    auditor = SimulatedExpert(COMPANY, api, csat_max=3)
    assert auditor.audit(0.0) == 0
    assert auditor.audit(0.5) >= len(picked)  # chats rated 4-5 by earlier tests may be picked too
    for conv_id, text in mine.items():
        annotations = store.annotations.for_conversation(conv_id)
        if conv_id not in picked:
            assert annotations == {}, "only the picked, highly rated chats are audited"
            continue
        [[annotation]] = annotations.values()
        flattering = text != intent.canonical_reply
        assert (annotation.score, annotation.corrected_reply) == ((1, intent.canonical_reply) if flattering
                                                                  else (2, ""))
    assert auditor.audit(0.5) == 0  # the same share picks the same chats: nothing new
    api.close()


# ---- summary statistics -----------------------------------------------------------------

def test_summary_statistics_on_hand_made_results():
    def chat(intent: str, version: str, rating: int | None, rubric: float, error: str = "") -> ChatResult:
        return ChatResult(intent, "patient", adapter_version=version, rubric=rubric, rating=rating, error=error)

    results = [chat("returns", "v1", 5, 5.0), chat("returns", "v1", 4, 4.0), chat("refunds", "v2", 3, 2.0),
               chat("refunds", "v2", None, 1.0), chat("refunds", "v2", None, float("nan"), error="HTTP 503")]
    summary = summarize(results)
    assert (summary.chats, summary.errors, summary.unrated_share) == (5, 1, 0.25)
    assert summary.csat.mean == 4.0 and summary.csat.n == 3
    assert 3.0 <= summary.csat.low <= 4.0 <= summary.csat.high <= 5.0
    assert summary.rubric.mean == 3.0 and summary.rubric.n == 4
    assert summary.per_intent["returns"].csat.mean == 4.5 and summary.per_intent["returns"].chats == 2
    assert summary.per_version["v2"].csat.n == 1 and summary.per_version["v2"].rubric == 1.5
    assert mean_ci([3, 3, 3]) == MeanCI(3.0, 3.0, 3.0, 3)
    assert mean_ci([]).n == 0


def test_bootstrap_interval_narrows_with_more_data_and_covers_the_mean():
    rng = random.Random(0)
    small = mean_ci([rng.randint(1, 5) for _ in range(20)])
    large = mean_ci([rng.randint(1, 5) for _ in range(2000)])
    assert small.low < small.mean < small.high and large.low < large.mean < large.high
    assert large.high - large.low < (small.high - small.low) / 5
    assert large.low < 3.0 < large.high


def test_paired_gain_counts_customers_rated_both_times_and_refuses_different_panels():
    gain = paired_gain([3, None, 2, 5, 4], [4, 5, None, 5, 5])
    assert gain.n == 3 and gain.mean == pytest.approx(2 / 3)  # +1, 0, +1; the unrated pairs are left out
    assert gain.low <= gain.mean <= gain.high
    steady = paired_gain([1, 2, 3, 4, 5] * 20, [2, 3, 4, 5, 5] * 20)  # every customer +1 but the fives
    assert steady.mean == pytest.approx(0.8) and steady.high - steady.low < 0.25
    with pytest.raises(ValueError, match="same customers"):
        paired_gain([3, 4], [3, 4, 5])


# ---- the gate's panel -------------------------------------------------------------------

def test_panel_compares_a_candidate_adapter_with_the_active_version(data_dir, base_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.adapter_helpers import write_adapter
    from harness.panel import run_panel

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir),
                           LoraConfig(r=1, lora_alpha=2, target_modules=["q_proj", "v_proj"]))
    write_adapter(model, tmp_path / "v0007", "v0007", base_model=str(base_model_dir))
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"p{uuid.uuid4().hex[:12]}",
                             base_model=str(base_model_dir), max_reply_tokens=8)
    verdict = run_panel(settings, COMPANY, tmp_path / "v0007", None, 4, 4,
                        CustomerConfig(leave_share=0.0, rating_noise=0.0), tolerance=0.0)
    details = verdict.to_dict()["details"]
    assert (details["candidate"], details["active"]) == ("v0007", "base")
    assert details["candidate_stats"]["rated"] == details["active_stats"]["rated"] == 4
    assert verdict.passed == (verdict.candidate_score >= verdict.active_score)
    assert FeedbackStore.from_settings(settings, announce=False).conversations.recent() == []


def _panel_active_v0001(data_dir, base_model_dir, tmp_path, inside: bool):
    """Settings on the session's Redis with a v0001 promoted, written inside the adapters directory or
    outside it; and an adapter of another data directory, also named v0001, as the candidate."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.adapter_helpers import write_adapter
    from feedback_store.records import AdapterVersion

    settings = load_settings({}, data_dir=data_dir, key_prefix=f"p{uuid.uuid4().hex[:12]}",
                             base_model=str(base_model_dir), max_reply_tokens=8)
    ours = (settings.adapters_dir / settings.key_prefix if inside else tmp_path / "ours") / "v0001"
    paths = {"ours": ours, "theirs": tmp_path / "theirs" / "v0001"}
    for path in paths.values():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir),
                               LoraConfig(r=1, lora_alpha=2, target_modules=["q_proj", "v_proj"]))
        write_adapter(model, path, "v0001", base_model=str(base_model_dir))
    store = FeedbackStore.from_settings(settings, announce=False)
    sha = json.loads((paths["ours"] / "manifest.json").read_text())["sha256"]
    store.adapters.register(AdapterVersion(version="v0001", path=str(paths["ours"]), sha256=sha,
                                           base_model=str(base_model_dir), parent="base",
                                           created_at=time.time(), updated_at=time.time()))
    store.adapters.promote("v0001", "test: the active version")
    return settings, paths["theirs"]


def test_panel_faces_an_adapter_named_like_the_active_version(data_dir, base_model_dir, tmp_path):
    # two data directories both have a v0001: the panel compares them without a name clash
    from harness.panel import run_panel

    settings, candidate = _panel_active_v0001(data_dir, base_model_dir, tmp_path, inside=True)
    verdict = run_panel(settings, COMPANY, candidate, "v0001", 3, 3,
                        CustomerConfig(leave_share=0.0, rating_noise=0.0), tolerance=0.0)
    details = verdict.to_dict()["details"]
    assert (details["candidate"], details["active"]) == ("v0001-candidate", "v0001")
    assert details["candidate_stats"]["rated"] == details["active_stats"]["rated"] == 3


def test_panel_refuses_an_active_version_the_registry_places_outside_the_adapters_dir(data_dir, base_model_dir,
                                                                                       tmp_path):
    from click.testing import CliRunner

    from harness.simulate_cli import simulate

    settings, candidate = _panel_active_v0001(data_dir, base_model_dir, tmp_path, inside=False)
    env = {"LOOPDESK_DATA_DIR": str(data_dir), "LOOPDESK_KEY_PREFIX": settings.key_prefix,
           "LOOPDESK_BASE_MODEL": str(base_model_dir), "REDIS_URL": "", "LOOPDESK_REDIS_URL": None}
    done = CliRunner().invoke(simulate, ["--panel", "--candidate-dir", str(candidate), "--active", "v0001",
                                         "--customers", "2"], env=env)
    assert done.exit_code == 1 and "--panel refused an adapter: v0001: the registry's path" in done.output
    assert "lies outside the adapters directory" in done.output
