"""The training corpus: held-out phrasings stay out, the style mix is exact, output is seeded."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from sim.company import load_company
from sim.corpus import DEFAULT_MIX, STYLES, UNANSWERED, CorpusConfig, generate_corpus, quotas


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_held_out_phrasings_never_appear_in_the_corpus() -> None:
    held_out = {_normal(t) for t in load_company().held_out_phrasings}
    corpus = generate_corpus(CorpusConfig(n_dialogues=1300))
    for dialogue in corpus:
        for message in dialogue.messages:
            text = _normal(message["content"])
            assert not any(h in text for h in held_out), message


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


def test_chats_are_well_formed_and_styles_show() -> None:
    company = load_company()
    for dialogue in generate_corpus(CorpusConfig(n_dialogues=400, seed=3)):
        roles = [m["role"] for m in dialogue.messages]
        assert roles == ["system"] + ["user", "assistant"] * len(dialogue.styles)
        assert dialogue.messages[0]["content"] == company.shop.system_prompt
        intent = company.intent(dialogue.intent)
        for turn, (question, style) in enumerate(zip(dialogue.questions, dialogue.styles)):
            reply = dialogue.messages[2 + 2 * turn]["content"]
            follow_up = question == "follow_up"
            if style in ("good", "curt", "too_long", "over_apologetic"):
                assert intent.missing_facts(reply, follow_up) == [], (style, reply)
            if style == "wrong_facts":
                assert intent.wrong_facts_in(reply, follow_up), reply
            if style in ("vague", "flattering"):
                assert intent.missing_facts(reply, follow_up), reply


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
