"""The reward builder's formula, checked against hand-computed cases."""

import math

import pytest

from trainer.config import RewardBuilderConfig
from trainer.rewards import FeedbackTurn, build_rewards, counted_csat, turn_reward


@pytest.fixture
def config() -> RewardBuilderConfig:
    return RewardBuilderConfig()


@pytest.mark.parametrize("csat, expected", [(1, -1.0), (2, -0.5), (3, 0.0), (4, 0.5), (5, 1.0)])
def test_csat_alone_maps_linearly_onto_minus_one_to_one(config, csat, expected):
    assert turn_reward(FeedbackTurn("c", 0, csat=csat), config) == pytest.approx(expected)


def test_expert_scores_are_averaged_and_halved(config):
    # mean(2, 1) / 2 = 0.75
    assert turn_reward(FeedbackTurn("c", 0, expert_scores=[2, 1]), config) == pytest.approx(0.75)


def test_expert_score_dominates_csat_when_both_present(config):
    # 0.8 * (-2 / 2) + 0.2 * (5 - 3) / 2 = -0.8 + 0.2 = -0.6
    turn = FeedbackTurn("c", 0, csat=5, expert_scores=[-2])
    assert turn_reward(turn, config) == pytest.approx(-0.6)


def test_expert_weight_is_configurable():
    # 0.5 * 0.5 + 0.5 * 0.5 = 0.5
    turn = FeedbackTurn("c", 0, csat=4, expert_scores=[1])
    assert turn_reward(turn, RewardBuilderConfig(expert_weight=0.5)) == pytest.approx(0.5)


def test_tag_penalties_add_once_per_distinct_tag(config):
    # csat 4 → 0.5; wrong_info (twice, counted once) -0.5, too_long -0.2 → -0.2
    turn = FeedbackTurn("c", 0, csat=4, tags=["wrong_info", "too_long", "wrong_info"])
    assert turn_reward(turn, config) == pytest.approx(-0.2)


def test_great_tag_is_a_bonus_and_unknown_tags_are_ignored(config):
    # expert 1 → 0.5; great +0.2; "typo" unknown → 0.7
    turn = FeedbackTurn("c", 0, expert_scores=[1], tags=["great", "typo"])
    assert turn_reward(turn, config) == pytest.approx(0.7)


def test_reward_is_clamped_to_unit_interval(config):
    low = FeedbackTurn("c", 0, csat=1, tags=["rude", "wrong_info"])  # -1 - 0.8 → -1
    high = FeedbackTurn("c", 1, expert_scores=[2], tags=["great"])  # 1 + 0.2 → 1
    assert turn_reward(low, config) == -1.0
    assert turn_reward(high, config) == 1.0


def test_tags_without_any_score_start_from_neutral(config):
    assert turn_reward(FeedbackTurn("c", 0, tags=["off_topic"]), config) == pytest.approx(-0.3)


def test_turns_without_feedback_are_left_out_and_order_is_kept(config):
    turns = [
        FeedbackTurn("a", 0, csat=5),
        FeedbackTurn("a", 1),
        FeedbackTurn("b", 0, expert_scores=[-1]),
    ]
    rewards = build_rewards(turns, config)
    assert [(r.conversation_id, r.turn_index) for r in rewards] == [("a", 0), ("b", 0)]
    assert [r.reward for r in rewards] == pytest.approx([1.0, -0.5])


def test_whitening_gives_zero_mean_unit_std():
    turns = [FeedbackTurn("a", i, csat=c) for i, c in enumerate([1, 3, 5])]
    rewards = [r.reward for r in build_rewards(turns, RewardBuilderConfig(whiten=True))]
    # raw -1, 0, 1: mean 0, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert rewards == pytest.approx([-1 / s, 0.0, 1 / s])


def test_conversation_csat_reaches_every_bot_turn(config):
    turns = [FeedbackTurn("a", i, csat=2) for i in range(3)]
    assert [r.reward for r in build_rewards(turns, config)] == pytest.approx([-0.5] * 3)


def test_out_of_range_feedback_is_rejected():
    with pytest.raises(ValueError):
        FeedbackTurn("a", 0, csat=6)
    with pytest.raises(ValueError):
        FeedbackTurn("a", 0, expert_scores=[3])
    with pytest.raises(ValueError):
        RewardBuilderConfig(expert_weight=1.5)


def test_one_clients_many_ratings_count_as_one_customers_csat(config):
    # 30 ratings of 5 from one client and 10 customers rating 1 once: 11 CSAT rewards, one +1 and ten -1
    flood = [FeedbackTurn(f"f{i}", turn, csat=5, rater="a" * 32) for i in range(30) for turn in (1, 3)]
    honest = [FeedbackTurn(f"h{i}", 1, csat=1) for i in range(10)]
    rewards = build_rewards(flood + honest, config)
    assert sorted(r.reward for r in rewards) == [-1.0] * 10 + [1.0, 1.0]  # both turns of the one counted chat
    kept = {r.conversation_id for r in rewards if r.reward > 0}
    assert len(kept) == 1
    assert {r.conversation_id for r in build_rewards(flood[::-1] + honest, config) if r.reward > 0} == kept
    everything = build_rewards(flood + honest, RewardBuilderConfig(max_csat_per_client=0))
    assert len(everything) == 70
    two = build_rewards(flood + honest, RewardBuilderConfig(max_csat_per_client=2))
    assert len({r.conversation_id for r in two if r.reward > 0}) == 2


def test_a_dropped_csat_leaves_the_turns_expert_feedback(config):
    turns = [FeedbackTurn(c, 1, csat=5, rater="a" * 32) for c in "abc"]
    (kept,) = counted_csat(turns, 1)
    dropped = next(t for t in turns if t.conversation_id != kept)
    dropped.expert_scores = [-2]
    rewards = {r.conversation_id: r.reward for r in build_rewards(turns, config)}
    assert rewards == {kept: 1.0, dropped.conversation_id: -1.0}  # the expert's -2 alone, without the CSAT


def test_a_rating_stored_beyond_the_client_cap_never_counts():
    turns = [FeedbackTurn("a", 1, csat=5, csat_weight=0.0), FeedbackTurn("b", 1, csat=2)]
    rewards = build_rewards(turns, RewardBuilderConfig(max_csat_per_client=0))
    assert [(r.conversation_id, r.reward) for r in rewards] == [("b", -0.5)]
