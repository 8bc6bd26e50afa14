"""Retrieval: accuracy on the demo shop's questions, the "nothing fits" threshold, the query
built from a conversation, and the context the model sees."""

from __future__ import annotations

import pytest

from loopdesk.articles import VersionedArticle
from loopdesk.config import Settings
from loopdesk.knowledge import (
    MIN_SCORE,
    PASSAGE_CHARS,
    NO_ARTICLE,
    KnowledgeIndex,
    customer_query,
    paragraphs,
    passage_text,
    plain_text,
    render_context,
)
from sim.knowledge_eval import demo_index, evaluate


def article(article_id: str, title: str, body: str, version: int = 1,
            tags: tuple[str, ...] = ()) -> VersionedArticle:
    return VersionedArticle(id=article_id, title=title, body=body, tags=list(tags), version=version)


@pytest.fixture(scope="module")
def reports():
    return evaluate(demo_index())


# Measured on the committed articles (bench/knowledge_retrieval.py); each bound sits a little
# below the measurement: top-1 / top-3 / right passage seen 0.988 / 1.000 / 0.985, held-out
# 0.983 / 1.000 / 0.966 (the same as the personas write them), follow-ups 0.998 / 1.000 / 0.998,
# person/assistant questions 1.000 / 1.000.
@pytest.mark.parametrize("kind, top1, top3, passage", [
    ("seen", 0.97, 0.99, 0.97), ("held_out", 0.96, 0.99, 0.95), ("seen_dressed", 0.97, 0.99, 0.97),
    ("held_out_dressed", 0.96, 0.99, 0.95), ("follow_up", 0.98, 0.99, 0.98), ("extra", 0.85, 0.85, 0.0)])
def test_the_right_article_and_paragraph_come_first_for_the_shops_questions(reports, kind, top1, top3, passage):
    report = reports[kind]
    assert report.n > 0
    assert report.top1_rate >= top1 and report.top3_rate >= top3, [p.question for p, _ in report.misses]
    assert report.passage_rate >= passage


def test_min_score_keeps_in_scope_questions_and_turns_away_most_others(reports):
    # measured: every seen, held-out, follow-up and person question kept; 0.781 of the general out-of-scope
    # questions rejected; the ones on shop words mostly pass (the model declines them)
    for kind in ("seen", "held_out", "seen_dressed", "held_out_dressed", "follow_up"):
        assert reports[kind].share_at_least(MIN_SCORE) >= 0.99, kind
    assert reports["extra"].share_at_least(MIN_SCORE) >= 0.85
    assert 1 - reports["out_of_scope"].share_at_least(MIN_SCORE) >= 0.75
    assert reports["held_out"].quantile(0.5) > 2 * reports["out_of_scope"].quantile(0.9)


def test_are_you_a_bot_finds_the_person_article_and_gibberish_finds_nothing():
    index = demo_index()
    assert [h.id for h in index.search("Are you a bot?", k=1)] == ["talk-to-a-person"]
    assert index.search("asdfghjkl qwerty", k=3) == []
    assert index.search("What is the capital of France?", k=3) == []
    assert index.search("", k=3) == []


def test_search_returns_the_best_k_with_version_and_respects_min_score():
    index = KnowledgeIndex([
        article("refunds", "Refunds", "We refund your money within 5-7 business days.", version=3),
        article("returns", "Returns", "Return unused items within 30 days for a refund."),
        article("warranty", "Warranty", "Two-year warranty on manufacturing defects.", tags=("repairs",)),
    ], revision=7)
    hits = index.search("refund money", k=2, min_score=0.0)
    assert [(h.id, h.version, h.title) for h in hits] == [("refunds", 3, "Refunds"), ("returns", 1, "Returns")]
    assert hits[0].score > hits[1].score > 0
    assert index.search("refund money", k=1, min_score=0.0) == hits[:1]
    assert index.search("refund money", k=3, min_score=hits[0].score + 1) == []
    assert [h.id for h in index.search("repairs", k=3, min_score=0.0)] == ["warranty"]  # tags are indexed
    assert index.revision == 7 and len(index) == 3
    assert index.passages(hits)[0].body.startswith("We refund")
    assert KnowledgeIndex([]).search("refund", k=3) == []


@pytest.mark.parametrize("messages, expected", [
    ([], ""),
    (["Where is my parcel?"], "Where is my parcel?"),
    (["Can I return my jacket?", "  What about\nsale items? "], "Can I return my jacket?\nWhat about sale items?"),
    (["Hi", "My boots arrived broken.", "Can I get my money back instead?"],
     "My boots arrived broken.\nCan I get my money back instead?"),
])
def test_the_query_is_the_last_two_messages_one_a_line(messages, expected):
    assert customer_query(messages) == expected


def test_the_newest_message_decides_the_topic_and_the_paragraph():
    index = demo_index()
    [switch] = index.search(customer_query(["How long does shipping take?",
                                            "Thanks. Also, how do I reset my password for the online account?"]), k=1)
    assert switch.id == "password-reset" and switch.paragraph == 0
    [sale] = index.search(customer_query(["Can I return my jacket?", "What about sale items?"]), k=1)
    assert sale.id == "returns" and "sale" in index.passages([sale])[0].body
    assert sale.paragraph == 1 and index.search("Can I return my jacket?", k=1)[0].paragraph == 0
    [missing] = index.search(customer_query(["Where is my parcel?", "It says delivered but I don't have it."]), k=1)
    assert (missing.id, missing.paragraph) == ("order-status", 1)


def test_what_customers_type_around_a_question_does_not_move_the_search():
    index = demo_index()
    for question in ("Where is my order?", "How do I reset my password?", "Is the Trailhead 40 waterproof?"):
        plain = index.search(question, k=3, min_score=0.0)
        dressed = index.search(f"Hi there! Quick question. {question} Thanks, please hurry!", k=3, min_score=0.0)
        assert dressed == plain, question


def test_paragraphs_split_at_blank_lines_and_short_ones_join_a_neighbour():
    body = "## Refunds\n\nWe refund your money within five to seven business days of receiving the return.\n\n" \
           "Your bank may need three more days to show the money on your statement, so please wait.\n\nThanks!"
    assert [plain_text(p) for p in paragraphs(body)] == [
        "Refunds We refund your money within five to seven business days of receiving the return.",
        "Your bank may need three more days to show the money on your statement, so please wait. Thanks!"]
    assert paragraphs("Just one line.") == ["Just one line."]


def test_the_bots_passage_setting_defaults_to_the_passage_length():
    assert Settings().kb_passage_chars == PASSAGE_CHARS and Settings().kb_min_score == MIN_SCORE


def test_a_long_passage_is_cut_at_a_sentence_end():
    refunds = article("refunds", "Refunds", "We refund within 5-7 business days. Your bank adds up to 3 days. " * 10)
    assert passage_text(refunds, 80) == "We refund within 5-7 business days. Your bank adds up to 3 days."
    assert passage_text(refunds, 11) == "We refund…"


def test_plain_text_drops_markdown_markup():
    markdown = "## Refunds\n\n**Money back** within *5-7 days*.\n\n- see [our page](https://x.example)\n> `code`"
    assert plain_text(markdown) == "Refunds Money back within 5-7 days. see our page code"


def test_the_context_puts_each_passage_after_the_system_prompt():
    refunds = article("refunds", "Refunds", "**Money back** within 5-7 business days.\n\nWe email you.", version=3)
    context = render_context("You are the shop's assistant.", [refunds])
    assert context == ('You are the shop\'s assistant.\n'
                       'Help article "Refunds" (refunds v3): Money back within 5-7 business days. We email you.')
    long = article("long", "Long", "word " * 500)
    line = render_context("Prompt.", [long], max_chars=100).split("\n")[1]
    body = line.split(": ", 1)[1]
    assert len(body) <= 100 and body.endswith("word…")
    assert render_context("Prompt.", []) == f"Prompt.\n{NO_ARTICLE}"
