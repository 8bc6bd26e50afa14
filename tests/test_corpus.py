"""The training corpus: every reply sees the passage the bot would retrieve, facts vary between chats,
held-out phrasings stay out, the style mix is exact, output is seeded."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from loopdesk.articles import VersionedArticle
from loopdesk.knowledge import KnowledgeIndex, customer_query, passage_text, render_context
from sim.company import load_company, states
from sim.corpus import DEFAULT_MIX, STYLES, UNANSWERED, CorpusConfig, Dialogue, generate_corpus, quotas
from sim.knowledge import load_templates, out_of_scope_questions, render_article, template_for
from sim.rubric import INVENTED_PROMISE, declines

COMPANY = load_company()
CORPUS = generate_corpus(CorpusConfig(n_dialogues=700, seed=3))


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_held_out_phrasings_never_appear_in_the_corpus() -> None:
    held_out = {_normal(t) for t in COMPANY.held_out_phrasings | set(out_of_scope_questions(held_out=True))}
    corpus = generate_corpus(CorpusConfig(n_dialogues=1300))
    for dialogue in corpus:
        for turn in dialogue.turns:
            for text in (_normal(turn.context), _normal(turn.question), _normal(turn.reply)):
                assert not any(h in text for h in held_out), turn


def test_style_mix_matches_configured_proportions() -> None:
    config = CorpusConfig(n_dialogues=1000, follow_up_share=0.4)
    corpus = generate_corpus(config)
    first_try = Counter(s for d in corpus for q, s in zip(d.questions, d.styles) if q != "reask")
    again = Counter(s for d in corpus for q, s in zip(d.questions, d.styles) if q == "reask")
    assert sum(first_try.values()) == 1400
    for style, share in DEFAULT_MIX.items():
        assert abs(first_try[style] / 1400 - share) <= 1 / 1400, style
        assert abs(again[style] / sum(again.values()) - share) <= 1 / sum(again.values()), style

    custom = CorpusConfig(n_dialogues=100, follow_up_share=0.0, reask_share=0.0, mix={"good": 0.5, "vague": 0.5})
    assert Counter(s for d in generate_corpus(custom) for s in d.styles) == {"good": 50, "vague": 50}


def test_customers_ask_again_exactly_when_the_opening_went_unanswered() -> None:
    corpus = generate_corpus(CorpusConfig(n_dialogues=600, follow_up_share=0.5))
    for dialogue in corpus:
        asked_again = "reask" in dialogue.questions
        assert asked_again == (dialogue.styles[0] in UNANSWERED), dialogue
        assert dialogue.questions == ("opening",) + ("reask",) * asked_again + ("follow_up",) * (
            len(dialogue.questions) - 1 - asked_again)
    assert not any("reask" in d.questions for d in generate_corpus(CorpusConfig(n_dialogues=200, reask_share=0.0)))


def test_quotas_always_sum_to_the_total() -> None:
    for total in (1, 7, 99, 1001):
        assert sum(quotas(DEFAULT_MIX, total).values()) == total


def test_default_mix_makes_a_mediocre_base() -> None:
    assert set(DEFAULT_MIX) == set(STYLES)
    assert 0.2 <= DEFAULT_MIX["good"] <= 0.35


def _knowledge_index(dialogue: Dialogue) -> KnowledgeIndex:
    """The knowledge base the chat happened against, rebuilt from its facts' values."""
    articles = [render_article(t, COMPANY, dialogue.knowledge[t.intent or t.id]) for t in load_templates()]
    return KnowledgeIndex([VersionedArticle(**a.model_dump(), version=1) for a in articles])


def test_every_reply_sees_the_passage_the_bot_would_retrieve() -> None:
    prompt = COMPANY.shop.system_prompt
    for dialogue in CORPUS[:150]:
        index = _knowledge_index(dialogue)
        for number, turn in enumerate(dialogue.turns):
            asked = [t.question for t in dialogue.turns[:number + 1]]
            hits = index.search(customer_query(asked), k=1)
            assert turn.context == render_context(prompt, index.passages(hits)), turn
            assert turn.trained == bool(hits) and turn.passage == (hits[0].id if hits else None)
            if not hits:
                assert turn.reply == COMPANY.shop.decline()
            assert dialogue.prompt(number)[0] == {"role": "system", "content": turn.context}
    assert all(t.trained and "\nHelp article " in t.context for d in CORPUS for t in d.turns if t.kind == "opening")


def test_facts_vary_between_chats_and_good_replies_state_their_passages_values() -> None:
    for intent in COMPANY.intents:
        chats = [d for d in CORPUS if d.intent == intent.name]
        for fact in intent.facts:
            assert len({d.values[fact] for d in chats}) >= 4, (intent.name, fact)
    good = [(d, t) for d in CORPUS if d.intent for t in d.turns if t.style == "good" and t.answerable]
    assert len(good) > 100
    for dialogue, turn in good:
        intent = COMPANY.intent(dialogue.intent)
        follow_up = turn.kind == "follow_up"
        assert intent.missing_facts(turn.reply, follow_up, dialogue.values) == [], turn
        assert intent.wrong_facts_in(turn.reply, follow_up, dialogue.values) == [], turn
        shown = turn.context.split("): ", 1)[1]
        assert all(states(dialogue.values[f], shown) for f in intent.used_facts(follow_up)), turn
    assert sum(d.values != COMPANY.intent(d.intent).facts for d, _ in good) > 0.6 * len(good)


def test_a_wrong_facts_reply_contradicts_its_passage() -> None:
    wrong = [(d, t) for d in CORPUS if d.intent for t in d.turns if t.style == "wrong_facts" and t.answerable]
    assert len(wrong) > 50
    for dialogue, turn in wrong:
        intent = COMPANY.intent(dialogue.intent)
        follow_up = turn.kind == "follow_up"
        shown = turn.context.split("): ", 1)[1]
        stated = intent.wrong_facts_in(turn.reply, follow_up, dialogue.values)
        # values of the facts' pools that the passage gives to no fact: the passage says otherwise
        assert stated and not set(stated) & set(dialogue.values.values()), turn
        assert intent.wrong_facts_in(shown, follow_up, dialogue.values) == [], turn
        assert intent.missing_facts(turn.reply, follow_up, dialogue.values), turn


def test_chats_are_well_formed_and_styles_show() -> None:
    for dialogue in generate_corpus(CorpusConfig(n_dialogues=400, seed=3)):
        roles = [m["role"] for m in dialogue.messages]
        assert roles == ["user", "assistant"] * len(dialogue.styles)
        for turn in dialogue.turns:
            assert turn.context.startswith(COMPANY.shop.system_prompt + "\n")
        if dialogue.intent is None:
            continue
        intent = COMPANY.intent(dialogue.intent)
        for turn in (t for t in dialogue.turns if t.answerable):
            follow_up, reply, values = turn.kind == "follow_up", turn.reply, dialogue.values
            if turn.style in ("good", "curt", "too_long", "over_apologetic"):
                assert intent.missing_facts(reply, follow_up, values) == [], (turn.style, reply)
            if turn.style == "wrong_facts":
                assert intent.wrong_facts_in(reply, follow_up, values), reply
            if turn.style in ("vague", "flattering"):
                assert intent.missing_facts(reply, follow_up, values), reply


def test_some_chats_ask_what_no_article_answers_and_the_good_reply_declines() -> None:
    config = CorpusConfig(n_dialogues=1000, seed=5)
    corpus = generate_corpus(config)
    outside = [d for d in corpus if d.intent is None]
    assert len(outside) == round(config.out_of_scope_share * config.n_dialogues)
    seen = {_normal(q) for q in out_of_scope_questions()}
    for dialogue in outside:
        opening = dialogue.turns[0]
        assert opening.trained and not opening.answerable and "follow_up" not in dialogue.questions
        assert any(q in _normal(opening.question) for q in seen)
        for turn in (t for t in dialogue.turns if t.trained):
            if turn.style == "good":
                assert declines(turn.reply) and COMPANY.shop.contact_address in turn.reply, turn
            if turn.style == "wrong_facts":
                assert INVENTED_PROMISE.search(turn.reply), turn
    # an in-scope question whose passage does not hold the answer's facts is declined too; they are few
    unanswered = [t for d in corpus if d.intent for t in d.turns if t.trained and not t.answerable]
    assert 0 < len(unanswered) < 0.04 * sum(len(d.turns) for d in corpus if d.intent)
    assert all(declines(t.reply) for t in unanswered if t.style == "good")


def test_the_articles_chats_draw_from_are_the_shops_own() -> None:
    ids = {template_for(i.name).id for i in COMPANY.intents}
    assert {t.passage for d in CORPUS for t in d.turns if d.intent and t.answerable} <= ids


def test_corpus_is_deterministic_per_seed() -> None:
    first = generate_corpus(CorpusConfig(n_dialogues=50, seed=7))
    assert first == generate_corpus(CorpusConfig(n_dialogues=50, seed=7))
    assert first != generate_corpus(CorpusConfig(n_dialogues=50, seed=8))


@pytest.mark.parametrize("mix", [{"good": 0.5}, {"good": 0.5, "rude": 0.5}, {"good": 1.5, "vague": -0.5}])
def test_invalid_mix_is_rejected(mix: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CorpusConfig(mix=mix)
    with pytest.raises(ValueError):
        CorpusConfig(reask_share=1.5)
    with pytest.raises(ValueError):
        CorpusConfig(out_of_scope_share=-0.1)
