"""The demo shop's knowledge base: templates, the committed folder, facts read back from live articles."""

from __future__ import annotations

import re

import pytest

from loopdesk.knowledge import paragraphs, plain_text
from loopdesk.knowledge_files import read_articles
from sim.company import key_pattern, load_company, states
from sim.knowledge import (
    KNOWLEDGE_DIR,
    FactSentenceMissing,
    current_facts,
    fact_pools,
    fact_values,
    load_templates,
    recover_facts,
    render_article,
    render_files,
    template_for,
)
from sim.rubric import INVENTED_PROMISE


def test_the_committed_folder_is_the_rendering_of_the_templates():
    committed = {path.name: path.read_text(encoding="utf-8") for path in KNOWLEDGE_DIR.glob("*.md")}
    assert committed == render_files(), "regenerate it: python -m sim.knowledge"


def test_one_article_per_intent_plus_the_person_article():
    company = load_company()
    templates = load_templates()
    assert sorted(t.intent for t in templates if t.intent) == sorted(i.name for i in company.intents)
    assert [t.id for t in templates if t.intent is None] == ["talk-to-a-person"]
    assert len(read_articles(KNOWLEDGE_DIR)) == len(company.intents) + 1


def test_articles_are_help_centre_sized_and_state_their_key_facts():
    company = load_company()
    for template in load_templates():
        body = render_article(template).body
        assert 50 <= len(body.split()) <= 150, template.id
        if template.intent:
            intent = company.intent(template.intent)
            missing = [p for p in intent.key_facts + intent.follow_up.key_facts
                       if not re.search(key_pattern(p, intent.facts), body, re.IGNORECASE)]
            assert missing == [], template.id


def shown_paragraphs():
    """(template, its intent, the plain text of each paragraph of its article) for every intent's template."""
    company = load_company()
    for template in load_templates():
        if template.intent:
            yield template, company.intent(template.intent), [plain_text(p) for p in
                                                              paragraphs(render_article(template).body)]


def test_each_answer_uses_only_facts_of_the_paragraph_retrieval_shows_for_its_question():
    # the opening's answers state facts of the first paragraph, the follow-up's of the second
    for template, intent, shown in shown_paragraphs():
        values = fact_values(template)
        for follow_up, paragraph in ((False, shown[0]), (True, shown[1])):
            assert all(values[name] in paragraph for name in intent.used_facts(follow_up)), (template.id, follow_up)


def test_the_complaint_intent_promises_nothing_nobody_does():
    # its answers once promised a team lead's email within 24 hours; now they say what the article says
    intent = load_company().intent("complaint_escalation")
    body = render_article(template_for("complaint_escalation")).body
    for answer in intent.answers + intent.follow_up.answers:
        reply = intent.fill(answer)
        assert not INVENTED_PROMISE.search(reply), reply
        assert "0800 555 0199" in reply and "0800 555 0199" in body
    assert all("person" in intent.fill(a) for a in intent.answers)
    assert template_for("complaint_escalation").unstated_facts == {}


def test_no_paragraph_states_another_value_of_the_facts_its_question_is_answered_with():
    for template, intent, shown in shown_paragraphs():
        assert intent.wrong_facts_in(shown[0]) == [], template.id
        assert intent.wrong_facts_in(shown[1], follow_up=True) == [], template.id


def test_the_complaint_article_describes_what_really_happens():
    body = render_article(template_for("complaint_escalation")).body
    assert "0800 555 0199" in body and "8am to 6pm, Monday to Friday" in body
    assert "person" in body and "this chat" in body
    assert not re.search(r"team lead|within 24 hours|will (email|call) you", body, re.IGNORECASE)
    person = render_article(next(t for t in load_templates() if t.id == "talk-to-a-person")).body
    assert "bot" in person and "0800 555 0199" in person


def test_every_fact_is_read_back_from_its_rendered_article():
    for template in load_templates():
        assert recover_facts(template, render_article(template).body) == fact_values(template), template.id


def test_every_value_of_every_pool_is_read_back_and_no_two_values_of_a_pool_hold_one_another():
    for template in load_templates():
        for name, pool in fact_pools(template).items():
            assert len(pool) >= 7, (template.id, name)
            for value in pool:
                body = render_article(template, values={name: value}).body
                assert recover_facts(template, body)[name] == value, (template.id, name, value)
                assert [v for v in pool if v != value and states(v, value)] == [], (template.id, value)


def test_an_edited_value_is_what_the_simulator_reads_now():
    template = template_for("refunds")
    body = render_article(template).body.replace("5-7 business days", "10 business days")
    assert recover_facts(template, body)["refund_time"] == "10 business days"
    intent = load_company().intent("refunds")
    facts = current_facts(intent, body)
    assert facts["refund_time"] == "10 business days" and facts["bank_days"] == "3 business days"
    rewrapped = body.replace(" we refund it within", "\nwe **refund** it within")
    assert recover_facts(template, rewrapped)["refund_time"] == "10 business days"


def test_a_rewritten_fact_sentence_is_reported_not_guessed():
    template = template_for("refunds")
    body = render_article(template).body.replace("we refund it within", "your money comes back in")
    with pytest.raises(FactSentenceMissing, match=r"'refunds' no longer has the sentence that states method, "
                                                  r"refund_time \(like: .*<refund_time>"):
        recover_facts(template, body)


def test_a_fact_stated_twice_with_different_values_is_reported():
    template = template_for("exchanges")
    body = render_article(template).body
    edited = body.replace("Return it within 30 days for a refund", "Return it within 45 days for a refund")
    assert edited != body
    with pytest.raises(FactSentenceMissing, match="states window as both '30 days' and '45 days'"):
        recover_facts(template, edited)


def test_the_demo_folder_imports_into_the_store(store):
    result = store.knowledge.import_articles(read_articles(KNOWLEDGE_DIR))
    assert len(result.created) == len(load_templates()) and result.revision == 1
    assert {a.id for a in store.knowledge.published().articles} == {t.id for t in load_templates()}
