"""A training round's config comes from its defaults, a JSON file, LOOPDESK_ROUND_* variables and
flags (later wins, sections merged field by field); bad values name their source; a queued run's
recorded overrides go over the worker's own config."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from loopdesk.config import SettingsError
from loopdesk.settings_docs import documented_fields
from trainer.round_config import (SECTIONS, RoundConfig, WorkerOnlyFieldError, load_round_config, recordable_overrides,
                                  round_overrides, run_config)


def test_variables_fill_typed_nested_fields():
    config = load_round_config({
        "LOOPDESK_ROUND_ROLLOUT_STEPS": "7",
        "LOOPDESK_ROUND_METHOD": "sft",
        "LOOPDESK_ROUND_PPO__LEARNING_RATE": "1e-3",
        "LOOPDESK_ROUND_PPO__TRAIN_TEMPERATURE": "none",
        "LOOPDESK_ROUND_PPO__LORA_TARGET_MODULES": '["q_proj", "v_proj"]',
        "LOOPDESK_ROUND_REWARD_BUILDER__WHITEN": "true",
        "LOOPDESK_ROUND_REWARD_BUILDER__TAG_PENALTIES": '{"rude": -1}',
        "LOOPDESK_ROUND_GATE__EVALUATOR": "python -m panel --customers 30",
        "LOOPDESK_ROUND_GATE__PASS_STATUS": "active",
    })
    assert (config.rollout_steps, config.method) == (7, "sft")
    assert (config.ppo.learning_rate, config.ppo.train_temperature, config.ppo.lora_target_modules) == \
        (1e-3, None, ["q_proj", "v_proj"])
    assert config.reward_builder.whiten is True and config.reward_builder.tag_penalties == {"rude": -1.0}
    assert (config.gate.evaluator, config.gate.pass_status) == ("python -m panel --customers 30", "active")
    assert config.ppo.batch_size == RoundConfig().ppo.batch_size and config.logged_steps == RoundConfig().logged_steps
    assert load_round_config({"LOOPDESK_ROUND_PPO__LORA_TARGET_MODULES": "all-linear"}).ppo.lora_target_modules == "all-linear"


@pytest.mark.parametrize("env, message", [
    ({"LOOPDESK_ROUND_ROLOUT_STEPS": "5"}, "unknown variable LOOPDESK_ROUND_ROLOUT_STEPS"),
    ({"LOOPDESK_ROUND_PPO__LERNING_RATE": "1e-3"}, "unknown variable LOOPDESK_ROUND_PPO__LERNING_RATE"),
    ({"LOOPDESK_ROUND_PPO": "{}"}, "unknown variable LOOPDESK_ROUND_PPO:"),
    ({"LOOPDESK_ROUND_ROLLOUT_STEPS": "many"}, "LOOPDESK_ROUND_ROLLOUT_STEPS='many' is not a valid int"),
    ({"LOOPDESK_ROUND_GATE_HISTORY": "maybe"}, "LOOPDESK_ROUND_GATE_HISTORY='maybe' is not a valid bool"),
    ({"LOOPDESK_ROUND_PPO__LORA_TARGET_MODULES": "[1, 2]"}, "LOOPDESK_ROUND_PPO__LORA_TARGET_MODULES='\\[1, 2\\]' is not"),
    ({"LOOPDESK_ROUND_REWARD_BUILDER__TAG_PENALTIES": "rude=-1"}, "TAG_PENALTIES='rude=-1' is not a valid dict"),
    ({"LOOPDESK_ROUND_GATE__PASS_STATUS": "live"}, "LOOPDESK_ROUND_GATE__PASS_STATUS: pass_status must be"),
    ({"LOOPDESK_ROUND_GATE__TEMPERATURE": "1.0"}, "gate.temperature follows the bot's serving setting LOOPDESK_TEMPERATURE"),
    ({"LOOPDESK_ROUND_PPO__MAX_NEW_TOKENS": "9"}, "LOOPDESK_MAX_REPLY_TOKENS"),
])
def test_bad_round_variables_are_refused_with_the_variable_named(env, message):
    with pytest.raises(SettingsError, match=message):
        load_round_config(env)


def test_flags_beat_variables_beat_the_file_and_sections_merge_field_by_field(tmp_path):
    path = tmp_path / "round.json"
    path.write_text(json.dumps({"rollout_steps": 5, "logged_steps": 3,
                                "ppo": {"learning_rate": 1e-3, "batch_size": 16}, "gate": {"contexts": 16}}))
    env = {"LOOPDESK_ROUND_ROLLOUT_STEPS": "6", "LOOPDESK_ROUND_PPO__LEARNING_RATE": "2e-3"}
    config = load_round_config(env, path, {"rollout_steps": 9, "gate": {"pass_status": "active"}})
    assert (config.rollout_steps, config.logged_steps) == (9, 3)
    assert (config.ppo.learning_rate, config.ppo.batch_size) == (2e-3, 16)
    assert (config.gate.contexts, config.gate.pass_status) == (16, "active")
    assert load_round_config(env, path).rollout_steps == 6
    assert round_overrides({}, path) == {"rollout_steps": 5, "logged_steps": 3,
                                         "ppo": {"learning_rate": 1e-3, "batch_size": 16}, "gate": {"contexts": 16}}


@pytest.mark.parametrize("content, message", [
    ('{"rounds": 3}', "unknown field rounds"),
    ('{"ppo": {"lerning_rate": 1e-3}}', "unknown field ppo.lerning_rate"),
    ('{"ppo": {"learning_rate": "fast"}}', "ppo.learning_rate must be of type float, got 'fast'"),
    ('{"rollout_steps": 2.5}', "rollout_steps must be of type int, got 2.5"),
    ('{"gate_history": 1}', "gate_history must be of type bool, got 1"),
    ('{"ppo": 3}', "ppo must be an object of PPOConfig fields"),
    ('{"gate": {"max_new_tokens": 9}}', "gate.max_new_tokens follows the bot's serving setting"),
    ('[1, 2]', "must hold a JSON object"),
    ('{"ppo": ', "round config file .*round.json: Expecting value"),
    ('{"ppo": {"batch_size": 0}}', "round config from file .*round.json: batch_size, mini_batch_size"),
])
def test_bad_round_config_files_are_refused_with_the_file_named(tmp_path, content, message):
    path = tmp_path / "round.json"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_round_config({}, path)


def test_a_run_records_overrides_over_the_workers_own_config_section_by_field():
    own = load_round_config({"LOOPDESK_ROUND_GATE__EVALUATOR": "panel", "LOOPDESK_ROUND_ROLLOUT_STEPS": "5",
                             "LOOPDESK_ROUND_PPO__BATCH_SIZE": "16"})
    config = run_config(own, {"method": "sft", "logged_steps": 3, "ppo": {"seed": 7}, "baseline": {"seed": 2}})
    assert (config.gate.evaluator, config.rollout_steps, config.logged_steps, config.method) == ("panel", 5, 3, "sft")
    assert (config.ppo.seed, config.ppo.batch_size, config.baseline.seed) == (7, 16, 2)
    assert run_config(own, None) == own and run_config(own, {}) == own
    with pytest.raises(TypeError):
        run_config(own, {"rounds": 1})


@pytest.mark.parametrize("recorded, refused", [
    ({"gate": {"evaluator": "touch /tmp/owned"}}, "gate.evaluator"),
    ({"gate": {"evaluator_timeout_s": 1e9}}, "gate.evaluator_timeout_s"),
    ({"gate": {"margin": -10.0, "alpha": 1.0, "kl_budget": 1e9}}, "gate.margin, gate.alpha, gate.kl_budget"),
    ({"gate": {"max_unfinished_share": 1.0, "reference_tolerance": 2.0}},
     "gate.max_unfinished_share, gate.reference_tolerance"),
    ({"gate": {"pass_status": "active"}}, "gate.pass_status"),
    ({"gate": {"canary_alpha": 1.0, "canary_min_samples": 1}}, "gate.canary_alpha, gate.canary_min_samples"),
    ({"rollout_steps": 2, "holdout_share": 0.0, "reference_weight": 0.0}, "holdout_share, reference_weight"),
    ({"gate_history": False}, "gate_history"),
])
def test_a_run_that_records_the_gate_or_what_it_judges_by_is_refused(recorded, refused):
    own = load_round_config({"LOOPDESK_ROUND_GATE__EVALUATOR": "panel"})
    with pytest.raises(WorkerOnlyFieldError, match=f"the run's recorded config sets {refused}: the gate"):
        run_config(own, recorded)


def test_only_the_trainable_part_of_a_schedulers_overrides_is_recorded():
    overrides = {"rollout_steps": 4, "method": "kto", "ppo": {"seed": 3}, "gate": {"canary_min_samples": 5},
                 "holdout_share": 0.5}
    assert recordable_overrides(overrides) == {"rollout_steps": 4, "method": "kto", "ppo": {"seed": 3}}
    run_config(RoundConfig(), recordable_overrides(overrides))  # what it records, a worker takes


def test_every_round_field_is_documented_in_its_class():
    for cls in (RoundConfig, *SECTIONS.values()):
        assert set(documented_fields(cls)) == {f.name for f in fields(cls)}, cls.__name__
