"""``bench/ppo.py``'s reward comparison: each evaluation prompt's mean over runs and samples, and the
difference of two policies paired by prompt with a normal 95% interval over the prompts."""

from __future__ import annotations

import pytest

from bench.ppo import paired_difference, prompt_means


def run(*per_prompt: list[float]) -> dict:
    return {"eval_scores": [list(scores) for scores in per_prompt]}


def test_prompt_means_pool_runs_and_samples():
    assert prompt_means([run([1.0, 3.0], [0.0, 0.0])]) == [2.0, 0.0]
    assert prompt_means([run([1.0], [0.0]), run([3.0], [0.0])]) == [2.0, 0.0]  # two runs of one sample each


def test_the_difference_is_paired_by_prompt():
    mean, low, high = paired_difference([run([1.0, 3.0], [0.0, 0.0])], [run([0.0, 0.0], [1.0, 1.0])])
    # per prompt: 2 − 0 and 0 − 1; mean 0.5, sd 1.5·√2 over 2 prompts, half-width 1.96 · 1.5·√2 / √2 = 2.94
    assert (mean, low, high) == pytest.approx((0.5, -2.44, 3.44))
    # the same shift on every prompt is known exactly, however far apart the prompts are
    assert paired_difference([run([5.0], [-3.0], [9.0])], [run([4.0], [-4.0], [8.0])]) == pytest.approx((1.0, 1.0, 1.0))


def test_policies_must_answer_the_same_prompts():
    with pytest.raises(ValueError):
        paired_difference([run([1.0], [2.0])], [run([1.0])])
