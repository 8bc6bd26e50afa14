"""The expert-reference reward: word F1 against experts' corrections and approved replies, by context."""

from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from feedback_store.records import Annotation, BotTurn, TurnWithFeedback
from trainer.references import ExpertReferences, reference_texts, with_references, word_f1, words

CANONICAL = "Standard shipping takes 3-5 business days and is free on orders over $50."


def _turn(prompt: list[int], reply: str, *annotations: tuple[int, str], conv: str = "c1") -> TurnWithFeedback:
    now = time.time()
    turn = BotTurn(index=1, text=reply, context="", prompt_token_ids=prompt, reply_token_ids=[5, 6],
                   logprobs=[-1.0, -1.0], adapter_version="base", latency_ms=1.0, finished=True, created_at=now)
    notes = [Annotation(conversation_id=conv, turn_index=1, expert_id="e1", score=score, corrected_reply=fix,
                        created_at=now) for score, fix in annotations]
    return TurnWithFeedback(conversation_id=conv, turn=turn, customer_text="?", csat=2, annotations=notes,
                            conversation_started_at=now)


def test_words_keep_figures_prices_and_addresses_whole():
    assert words("Free over $50, see northwind.example/returns in 3-5 days.") == {
        "free": 1, "over": 1, "$50": 1, "see": 1, "northwind.example/returns": 1, "in": 1, "3-5": 1, "days": 1}


def test_word_f1_rewards_the_facts_and_punishes_filler_and_wrong_figures():
    ref = words(CANONICAL)
    assert word_f1(words(CANONICAL), ref) == 1.0
    assert word_f1(words("Our new boots look great!"), ref) == 0.0
    wrong = word_f1(words(CANONICAL.replace("3-5", "7-9").replace("$50", "$80")), ref)
    grovel = word_f1(words("I am so sorry, so very sorry. " + CANONICAL + " Sorry again!"), ref)
    half = word_f1(words("Standard shipping takes 3-5 business days."), ref)
    assert 0 < wrong < 1 and 0 < grovel < 1 and 0 < half < 1
    # 11 of 13 words right: 2·11/(13+13)
    assert wrong == pytest.approx(22 / 26)


def test_references_are_corrections_and_replies_approved_with_the_top_score():
    prompt = [1, 2, 3]
    assert reference_texts(_turn(prompt, "meh", (-1, CANONICAL))) == [CANONICAL]
    assert reference_texts(_turn(prompt, CANONICAL, (2, ""))) == [CANONICAL]  # approved as it stands
    assert reference_texts(_turn(prompt, "meh", (1, ""))) == []  # a middling score with no correction
    assert reference_texts(_turn(prompt, "bad", (-2, "Fix A."), (-1, "Fix B."))) == ["Fix A.", "Fix B."]


def test_score_uses_the_closest_reference_of_the_exact_context(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    turns = [_turn([1, 2, 3], "meh", (-1, CANONICAL)),
             _turn([1, 2, 3], "other", (-2, "Express takes 1-2 business days."), conv="c2"),
             _turn([7, 8], "meh", (0, ""), conv="c3")]  # no reference: not a context
    refs = ExpertReferences.from_turns(turns, tokenizer)
    assert len(refs) == 1 and refs.contexts() == [[1, 2, 3]] and refs.has([1, 2, 3]) and not refs.has([7, 8])
    exact = tokenizer(CANONICAL, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    other = tokenizer("Express takes 1-2 business days.", add_special_tokens=False)["input_ids"]
    assert refs.score([1, 2, 3], exact) == pytest.approx(1.0)  # EOS and other special tokens are not words
    assert refs.score([1, 2, 3], other) == pytest.approx(1.0)  # the closest of the pooled references
    assert refs.score([7, 8], exact) is None and refs.score([1, 2], exact) is None
    off = tokenizer("Our new boots look great!", add_special_tokens=False)["input_ids"]
    assert refs.score([1, 2, 3], off) == pytest.approx(-1.0)

    pairs = [([1, 2, 3], exact), ([7, 8], exact), ([1, 2, 3], off)]
    scores, found = with_references([0.5, 0.5, 0.5], pairs, refs, weight=0.5)
    assert found == [pytest.approx(1.0), None, pytest.approx(-1.0)]
    assert scores == [pytest.approx(1.0), 0.5, pytest.approx(0.0)]
    unweighted, still_found = with_references([0.5, 0.5, 0.5], pairs, refs, weight=0.0)
    assert unweighted == [0.5, 0.5, 0.5] and still_found == found  # measured whatever the weight
