"""The reward model: preference pairs from feedback, TRL RewardTrainer training, held-out accuracy."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from feedback_store.records import Annotation, BotTurn, TurnWithFeedback
from trainer.config import RewardModelConfig
from trainer.reward_model import PreferencePair, RewardModel, build_pairs, message_key, split_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _turn(conv: str, customer: str, prompt: list[int], reply: list[int], correction: str = "") -> TurnWithFeedback:
    turn = BotTurn(index=1, text="bot reply", context="ctx", prompt_token_ids=prompt, reply_token_ids=reply,
                   logprobs=[-1.0] * len(reply), adapter_version="base", latency_ms=1, finished=True,
                   created_at=0.0)
    annotations = [Annotation(conversation_id=conv, turn_index=1, expert_id="e", score=-1,
                              corrected_reply=correction)] if correction else []
    return TurnWithFeedback(conversation_id=conv, turn=turn, customer_text=customer, csat=3,
                            annotations=annotations, conversation_started_at=0.0)


def test_pairs_prefer_corrections_and_higher_reward_on_the_same_message(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    turns = [
        _turn("a", "Where is my order?", [1, 2], [10, 11], correction="It ships today."),
        _turn("b", "  where IS my   order? ", [1, 2], [20]),
        _turn("c", "Where is my order?", [1, 3], [30]),
        _turn("d", "Something else", [1, 4], [40]),
    ]
    rewards = {("a", 1): -0.5, ("b", 1): 1.0, ("c", 1): 0.9, ("d", 1): -1.0}
    pairs = build_pairs(turns, rewards, tokenizer, RewardModelConfig(min_reward_gap=0.25))
    corrections = [p for p in pairs if p.source == "correction"]
    assert len(corrections) == 1
    correction_ids = tokenizer("It ships today.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert corrections[0].chosen == ([1, 2], correction_ids) and corrections[0].rejected == ([1, 2], [10, 11])
    by_reward = {(p.chosen[1][0], p.rejected[1][0]) for p in pairs if p.source == "reward"}
    # b (1.0) and c (0.9) both beat a (-0.5); b vs c differ by < 0.25; d answers another message
    assert by_reward == {(20, 10), (30, 10)}
    assert message_key("  where IS my   order? ") == message_key("Where is my order?")
    assert not [p for p in pairs if p.source == "cross"], "one correction alone has no other question's to beat"


def test_each_correction_beats_other_questions_corrections_after_its_own_prompt(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    texts = ["It ships today.", "Refunds take 5 days.", "Returns are free.", "It ships today."]
    turns = [_turn(f"c{i}", f"question {i}", [1, 50 + i], [60 + i], correction=t) for i, t in enumerate(texts)]
    ids = {t: tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts}
    pairs = build_pairs(turns, {}, tokenizer, RewardModelConfig(cross_negatives=2))
    cross = [p for p in pairs if p.source == "cross"]
    assert len(cross) == 4 * 2
    for pair in cross:
        prompt, chosen = pair.chosen
        own = texts[prompt[1] - 50]
        assert pair.rejected[0] == prompt and chosen == ids[own]
        assert pair.rejected[1] != chosen and pair.rejected[1] in ids.values()  # a different question's answer
    assert not [p for p in build_pairs(turns, {}, tokenizer, RewardModelConfig(cross_negatives=0))
                if p.source == "cross"]
    with pytest.raises(ValueError, match="cross_negatives"):
        RewardModelConfig(cross_negatives=-1)


def test_split_holds_out_a_share_and_at_least_one_pair():
    pairs = [PreferencePair(([i], [1]), ([i], [2]), "reward") for i in range(10)]
    train, held = split_pairs(pairs, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8 and not set(map(id, train)) & set(map(id, held))
    assert [len(part) for part in split_pairs(pairs[:2], 0.01, seed=0)] == [1, 1]


def test_reward_model_ranks_held_out_pairs_and_survives_save_and_load(base_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Where is my order?"}],
                                           add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    good = ["Your order ships in two days.", "You can track it on the orders page.", "It arrives tomorrow."]
    bad = ["I do not know, go away.", "Whatever.", "No idea, ask someone else."]
    rng = random.Random(0)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    pairs = [PreferencePair((prompt_ids, ids(rng.choice(good))), (prompt_ids, ids(rng.choice(bad))), "reward")
             for _ in range(40)]
    train, held = split_pairs(pairs, 0.25, seed=0)
    model = RewardModel.train(str(base_model_dir), train, RewardModelConfig(epochs=3, learning_rate=3e-3),
                              tmp_path / "rm")
    assert model.pairwise_accuracy(held) >= 0.9
    scores = model.score([prompt, prompt], [good[0], bad[0]])
    assert scores[0] > scores[1]
    model.save(tmp_path / "saved")
    again = RewardModel.load(str(base_model_dir), tmp_path / "saved")
    assert again.score([prompt, prompt], [good[0], bad[0]]) == pytest.approx(scores, abs=1e-5)


def test_rated_turns_of_different_messages_pair_when_their_rewards_differ_enough(base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    rewards = {("a", 1): 1.0, ("b", 1): 0.5, ("c", 1): -0.2, ("d", 1): -1.0}
    turns = [_turn(c, f"message {c}", [1, 70 + i], [80 + i]) for i, c in enumerate("abcd")]
    reward_of = {80 + i: rewards[(c, 1)] for i, c in enumerate("abcd")}
    pairs = [p for p in build_pairs(turns, rewards, tokenizer, RewardModelConfig(rated_pairs=5, rated_gap=1.0))
             if p.source == "rated"]
    got = {(p.chosen[1][0], p.rejected[1][0]) for p in pairs}
    assert got == {(80, 82), (80, 83), (81, 83)}  # every pair ≥ 1.0 apart, higher reward chosen, no others
    assert all(reward_of[c] - reward_of[r] >= 1.0 for c, r in got) and len(pairs) == len(got)
    assert all(p.chosen[0] == [1, 70 + p.chosen[1][0] - 80] for p in pairs)  # each reply keeps its own prompt
    one_each = [p for p in build_pairs(turns, rewards, tokenizer, RewardModelConfig(rated_pairs=1))
                if p.source == "rated"]
    assert len(one_each) == 2  # a and b pick one later partner each; c and d have none left (d is 0.8 from c)
    capped = build_pairs(turns, rewards, tokenizer, RewardModelConfig(rated_pairs=5, max_pairs=2))
    assert len(capped) == 2 and all(p.source == "rated" for p in capped)
