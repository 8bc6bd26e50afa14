"""The simulator judges against the knowledge base as it is now: facts read back from live articles
(once per article version), out-of-scope customers who want an honest decline, and the rule that
an invented promise scores 1, for customers and the expert alike."""

from __future__ import annotations

from harness.serving import serve
from sim.client import ChatClient
from sim.company import load_company
from sim.customers import CustomerConfig, make_customers
from sim.experts import help_centre_facts, review_transcript
from sim.knowledge import LiveFacts, load_templates, out_of_scope_questions, render_article, template_for
from sim.oracle import create_oracle_app
from sim.rubric import (INVENTED_PROMISE, OUT_OF_SCOPE, conversation_score, declines, judge_out_of_scope,
                        judge_reply)
from sim.simulate import run_customers

COMPANY = load_company()
REFUNDS = COMPANY.intent("refunds")
PROMISE = "I have passed this to a team lead, who will email you within 24 hours."


def test_an_invented_promise_scores_1_wherever_it_is_made():
    for promise in COMPANY.styles.invented_promises + [PROMISE, "A refund has been issued to your card.",
                                                        "Someone will call you tomorrow."]:
        judged = judge_out_of_scope(COMPANY, promise)
        assert judged.promise and judged.score() == 1.0 and "invented_promise" in judged.tags(), promise
    in_scope = judge_reply(COMPANY, REFUNDS, f"{REFUNDS.canonical_reply} {PROMISE}")
    assert in_scope.facts_found == 1 and in_scope.promise and in_scope.score() == 1.0
    assert conversation_score([judge_reply(COMPANY, REFUNDS, REFUNDS.canonical_reply), in_scope], 0) <= 2.0


def test_an_honest_decline_or_referral_answers_what_no_article_answers():
    for reply in [COMPANY.shop.decline(i) for i in range(len(COMPANY.shop.declines))] + [
            "Sorry, I can't help with that. You can ask here to talk to a person.",
            "That isn't something I can answer, but our team is on 0800 555 0199."]:
        judged = judge_out_of_scope(COMPANY, reply)
        assert judged.intent == OUT_OF_SCOPE and declines(reply) and judged.score() >= 4.5, reply
    answered_another = judge_out_of_scope(COMPANY, REFUNDS.canonical_reply)
    assert answered_another.off_topic and answered_another.score() == 1.0 and "off_topic" in answered_another.tags()
    vague = judge_out_of_scope(COMPANY, COMPANY.styles.vague[0].format(topic="that"))
    assert vague.score() == 1.5 and vague.tags() == ["unhelpful"]
    assert judge_out_of_scope(COMPANY, COMPANY.styles.off_topic[0]).score() == 1.0


def test_nothing_the_shop_really_says_reads_as_an_invented_promise():
    texts = [COMPANY.shop.decline(i) for i in range(len(COMPANY.shop.declines))]
    for intent in COMPANY.intents:
        for template in intent.answers + intent.follow_up.answers:
            texts += [intent.fill(template), intent.fill(template, values={f: intent.pool(f)[-1] for f in intent.facts})]
    texts += [render_article(t).body for t in load_templates()]
    assert [t for t in texts if INVENTED_PROMISE.search(t)] == []


def edited_refunds(value: str, version: int = 2) -> dict:
    body = render_article(template_for("refunds")).body.replace("5-7 business days", value)
    return {"id": "refunds", "version": version, "body": body}


def test_facts_come_from_the_article_as_it_is_now_and_the_shipped_value_becomes_wrong():
    live = LiveFacts()
    values = live.of(REFUNDS, edited_refunds("8-12 business days"))
    assert values["refund_time"] == "8-12 business days" and values["bank_days"] == "3 business days"
    old = judge_reply(COMPANY, REFUNDS, REFUNDS.canonical_reply, values=values)
    assert old.wrong_facts == ("5-7 business days",) and old.facts_found == 0.5 and old.score() == 1.0
    new = judge_reply(COMPANY, REFUNDS, REFUNDS.reference_reply(False, values), values=values)
    assert new.facts_found == 1 and not new.wrong_facts and new.score() >= 4.5
    # read once per version: the same version is not read again, a new one is
    assert live.of(REFUNDS, edited_refunds("a fortnight"))["refund_time"] == "8-12 business days"
    assert live.of(REFUNDS, edited_refunds("9 business days", version=3))["refund_time"] == "9 business days"


def test_a_share_of_customers_ask_what_no_article_answers_seen_or_held_out():
    config = CustomerConfig(out_of_scope_share=0.25, follow_up_share=1.0)
    customers = make_customers(COMPANY, 40, config, seed=2)
    outside = [c for c in customers if c.intent is None]
    assert len(outside) == 10 and all(c.follow_up is None for c in outside)
    assert all(c.follow_up is not None for c in customers if c.intent is not None)
    seen, held = out_of_scope_questions(), out_of_scope_questions(held_out=True)
    for customer in outside:
        [question] = [q for q in seen if customer.reask.endswith(q)]
        assert question.lower().rstrip("?.!") in customer.opening.lower()
    held_customers = make_customers(COMPANY, 40, CustomerConfig(out_of_scope_share=0.25, held_out=True), seed=2)
    assert all(any(c.reask.endswith(q) for q in held) for c in held_customers if c.intent is None)
    assert not [c for c in make_customers(COMPANY, 40, CustomerConfig(out_of_scope_share=0.0)) if c.intent is None]


def test_customers_and_the_expert_read_each_article_once_over_http():
    app = create_oracle_app(COMPANY)
    reads: list[str] = []
    inner = app.wsgi_app

    def counting(environ, start_response):
        if environ["PATH_INFO"].startswith("/api/help/articles/"):
            reads.append(environ["PATH_INFO"].rsplit("/", 1)[1])
        return inner(environ, start_response)

    app.wsgi_app = counting
    with serve(app) as url:
        results = run_customers(url, COMPANY, 20, concurrency=4, progress=False,
                                config=CustomerConfig(out_of_scope_share=0.25, follow_up_share=1.0, rating_noise=0.0))
        assert all(r.rubric == 5.0 and r.reasks == 0 for r in results)  # the oracle declines what no article answers
        in_scope = [r for r in results if r.intent != OUT_OF_SCOPE]
        assert len(in_scope) == 15 and sorted(reads) == sorted(template_for(r.intent).id for r in in_scope)
        reads.clear()
        intent = COMPANY.intent("returns")
        turns = [{"index": 0, "role": "user", "text": intent.phrasings[0]},
                 {"index": 1, "role": "assistant", "text": intent.canonical_reply},
                 {"index": 2, "role": "user", "text": intent.follow_up.questions[0]},
                 {"index": 3, "role": "assistant", "text": intent.canonical_follow_up_reply}]
        reviews = review_transcript(COMPANY, turns, facts=help_centre_facts(ChatClient(url).help, LiveFacts()))
        assert [r.score for r in reviews] == [2, 2] and reads == ["returns"]


def test_the_expert_tags_an_invented_promise_and_corrects_it_with_the_decline():
    question = out_of_scope_questions()[0]
    turns = [{"index": 0, "role": "user", "text": f"Hi! {question}"},
             {"index": 1, "role": "assistant", "text": PROMISE},
             {"index": 2, "role": "user", "text": f"That doesn't answer my question. {question}"},
             {"index": 3, "role": "assistant", "text": COMPANY.shop.decline()}]
    promised, declined = review_transcript(COMPANY, turns)
    assert (promised.score, promised.tags, promised.corrected_reply) == (-2, ["invented_promise"], COMPANY.shop.decline())
    assert "promises an action nobody takes" in promised.note
    assert (declined.score, declined.tags, declined.corrected_reply) == (2, ["great"], "")


def test_the_corpus_declines_as_the_bot_does_when_nothing_fits():
    from bot.handoff import decline
    from loopdesk.config import Settings

    assert decline(Settings()) == COMPANY.shop.decline()
    assert Settings().contact_address == COMPANY.shop.contact_address
