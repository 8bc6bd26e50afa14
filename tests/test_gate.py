"""The evaluation gate (held-out reward, KL, unfinished replies, external evaluator); the live canary
decision after it is tested in test_canary.py."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer import gate
from trainer.config import GateConfig, PPOConfig
from trainer.policy import PolicyWithValueHead
from trainer.references import ExpertReferences
from trainer.reward_model import RewardModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def candidate_dir(base_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("candidate")
    PolicyWithValueHead.with_new_adapter(AutoModelForCausalLM.from_pretrained(base_model_dir),
                                         PPOConfig()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def untrained_reward_model(base_model_dir) -> RewardModel:
    tokenizer, model = RewardModel._base(str(base_model_dir))
    return RewardModel(model, tokenizer, max_length=256)


@pytest.fixture(scope="module")
def prompts(base_model_dir) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    texts = ["Where is my order?", "How do I return a jacket?", "Can I change my address?"]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for t in texts]


def _evaluator(tmp_path, script: str) -> str:
    path = tmp_path / "evaluator.py"
    path.write_text(script)
    return f"{sys.executable} {path}"


def test_gate_measures_both_adapters_and_passes_within_budget(base_model_dir, candidate_dir, prompts,
                                                              untrained_reward_model, tmp_path):
    config = GateConfig(max_new_tokens=8, margin=-1.0, max_unfinished_share=1.0, evaluator=_evaluator(
        tmp_path, "import json, sys\nprint('log line')\n"
                  "print(json.dumps({'pass': '--candidate' in sys.argv, 'candidate_score': 4.2, "
                  "'active_score': 4.0, 'details': {'active': sys.argv[-1]}}))\n"))
    verdict = gate.evaluate(str(base_model_dir), candidate_dir, None, "base", prompts, untrained_reward_model, config)
    assert verdict.passed, verdict.reasons
    assert verdict.candidate.replies == verdict.active.replies == 3 * config.samples_per_context
    assert abs(verdict.candidate.kl) < 1e-4  # a fresh LoRA (B = 0) is the base model
    assert verdict.external["details"] == {"active": "base"}
    metrics = verdict.metrics()
    assert metrics["gate_passed"] and "gate_candidate_rm_score" in metrics and "gate_active_kl" in metrics


def test_gate_fails_with_reasons_over_kl_budget_and_unfinished_limit(base_model_dir, candidate_dir, prompts,
                                                                    untrained_reward_model):
    config = GateConfig(max_new_tokens=2, margin=-1.0, kl_budget=-1.0, max_unfinished_share=0.0)
    verdict = gate.evaluate(str(base_model_dir), candidate_dir, candidate_dir, "v0001", prompts,
                            untrained_reward_model, config)
    assert not verdict.passed
    assert any("KL" in r for r in verdict.reasons) and any("unfinished" in r for r in verdict.reasons)


def test_a_candidate_not_significantly_ahead_is_rejected_with_the_p_value(base_model_dir, candidate_dir, prompts,
                                                                          untrained_reward_model):
    # A fresh LoRA is the base: equal scores, not ahead; the mean check alone (>=) would pass it.
    config = GateConfig(max_new_tokens=8, max_unfinished_share=1.0)
    verdict = gate.evaluate(str(base_model_dir), candidate_dir, None, "base", prompts, untrained_reward_model, config)
    assert verdict.candidate.rm_score == pytest.approx(verdict.active.rm_score, abs=1e-4)
    assert not verdict.passed and verdict.p_value > config.alpha and verdict.metrics()["gate_p_value"] > 0.05
    assert any("paired p" in r for r in verdict.reasons)
    with pytest.raises(ValueError, match="alpha"):
        GateConfig(alpha=0.0)


def test_each_context_scores_the_mean_of_its_sampled_replies(base_model_dir, candidate_dir, prompts,
                                                            untrained_reward_model):
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), str(candidate_dir),
                                      adapter_name=gate.CANDIDATE).eval()
    config = GateConfig(max_new_tokens=8, samples_per_context=3)
    tokenizer = untrained_reward_model.tokenizer
    stats, scores = gate.measure(model, None, prompts, untrained_reward_model, config,
                                 tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert stats.replies == 9 and len(scores) == 3  # three replies per context, one score per context
    assert sum(scores) / 3 == pytest.approx(stats.rm_score, abs=1e-5)
    assert len(set(scores)) > 1  # contexts differ, so they are not averaged together
    with pytest.raises(ValueError, match="samples_per_context"):
        GateConfig(samples_per_context=0)


def test_paired_p_value_is_one_sided_and_counts_the_margin():
    ahead = gate.paired_p_value([1.5, 2.0, 2.5, 1.0], [1.0, 1.0, 1.0, 1.0])  # diffs .5 1 1.5 0: mean .75, sd .645
    assert ahead == pytest.approx(0.5 * math.erfc(0.75 / (0.6455 / 2) / math.sqrt(2)), rel=1e-3) and ahead < 0.05
    assert gate.paired_p_value([1.0, 1.0, 1.0, 1.0], [1.5, 2.0, 2.5, 1.0]) > 0.95
    assert gate.paired_p_value([1.5, 2.0, 2.5, 1.0], [1.0, 1.0, 1.0, 1.0], margin=2.0) > 0.95
    assert gate.paired_p_value([2.0, 2.0], [1.0, 1.0]) == 0.0 and gate.paired_p_value([1.0], [1.0]) == 1.0


def test_external_evaluator_failures_become_gate_reasons(tmp_path):
    verdict = gate.run_evaluator(_evaluator(tmp_path, "print('{\"pass\": false}')"), tmp_path, "v1", 30)
    assert verdict["pass"] is False
    with pytest.raises(gate.EvaluatorError, match="not a verdict"):
        gate.run_evaluator(_evaluator(tmp_path, "print('all good')"), tmp_path, "v1", 30)
    with pytest.raises(gate.EvaluatorError, match="exited 3"):
        gate.run_evaluator(_evaluator(tmp_path, "import sys; sys.exit(3)"), tmp_path, "v1", 30)
    with pytest.raises(gate.EvaluatorError, match="did not finish"):
        gate.run_evaluator(_evaluator(tmp_path, "import time; time.sleep(5)"), tmp_path, "v1", 0.5)


def test_the_expert_view_is_measured_on_reviewed_contexts_and_can_refuse(base_model_dir, candidate_dir, prompts,
                                                                          untrained_reward_model):
    tokenizer = untrained_reward_model.tokenizer
    references = ExpertReferences(tokenizer, {tuple(prompts[0]): ["You can follow your order at northwind.example/track."],
                                              tuple(prompts[1]): ["Start your return at northwind.example/returns."]})
    lenient = GateConfig(max_new_tokens=8, margin=-1.0, alpha=1.0, max_unfinished_share=1.0)
    verdict = gate.evaluate(str(base_model_dir), candidate_dir, None, "base", prompts, untrained_reward_model,
                            lenient, references, reference_weight=1.0)
    # a fresh LoRA samples what the base samples: the same agreement on the 2 reviewed contexts of 3
    assert verdict.candidate.reference_replies == verdict.active.reference_replies == 2 * lenient.samples_per_context
    assert verdict.candidate.reference_score == pytest.approx(verdict.active.reference_score)
    assert -1.0 <= verdict.candidate.reference_score <= 1.0
    assert verdict.passed and verdict.checks["expert_view"], verdict.reasons
    assert verdict.metrics()["gate_candidate_reference_score"] == verdict.candidate.reference_score

    strict = GateConfig(max_new_tokens=8, margin=-1.0, alpha=1.0, max_unfinished_share=1.0, reference_tolerance=-0.5)
    refused = gate.evaluate(str(base_model_dir), candidate_dir, None, "base", prompts, untrained_reward_model,
                            strict, references, reference_weight=1.0)
    assert not refused.passed and not refused.checks["expert_view"]
    assert any("expert view worse" in r for r in refused.reasons)

    unreviewed = gate.evaluate(str(base_model_dir), candidate_dir, None, "base", prompts, untrained_reward_model,
                               strict, ExpertReferences(tokenizer, {}), reference_weight=1.0)
    assert "expert_view" not in unreviewed.checks and unreviewed.candidate.reference_score is None


def test_the_gates_kl_estimate_is_hand_worked_never_negative_and_unbiased() -> None:
    policy = torch.tensor([[-1.0, -2.0, -0.3], [-0.5, -0.5, 0.0]])
    reference = torch.tensor([[-1.5, -2.0, -9.0], [-0.2, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the third token is padding
    assert gate.reply_kl(policy, reference, mask).tolist() == pytest.approx(
        [math.exp(-0.5) - 1 + 0.5, math.exp(0.3) - 1 - 0.3], abs=1e-6)
    torch.manual_seed(0)  # tokens drawn from π over 4 tokens: the mean estimate is KL(π‖π_ref)
    pi, ref = torch.tensor([0.5, 0.3, 0.15, 0.05]), torch.tensor([0.25, 0.25, 0.25, 0.25])
    drawn = torch.multinomial(pi, 200_000, replacement=True)
    per_token = gate.reply_kl(pi.log()[drawn].unsqueeze(1), ref.log()[drawn].unsqueeze(1), torch.ones(len(drawn), 1))
    assert bool((per_token >= 0).all())
    assert float(per_token.mean()) == pytest.approx(float((pi * (pi / ref).log()).sum()), abs=5e-3)
