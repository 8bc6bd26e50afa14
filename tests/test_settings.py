"""Settings come from LOOPDESK_* variables, are validated, and are all documented in the README;
`loopdesk settings` prints the values in effect (secrets masked) and, with --round, a round's config."""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from loopdesk.cli import main as loopdesk_cli
from loopdesk.config import ROUND_PREFIX, Settings, SettingsError, load_settings
from loopdesk.settings_docs import documented_settings, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ROOMS = ("feedback_store", "bot", "trainer", "sim", "harness")


def test_environment_variables_fill_typed_settings():
    s = load_settings({"LOOPDESK_MAX_REPLY_TOKENS": "12", "LOOPDESK_TEMPERATURE": "0.9",
                       "REDIS_URL": "redis://example:6379/0", "LOOPDESK_DATA_DIR": "/srv/x"})
    assert (s.max_reply_tokens, s.temperature, s.redis_url, s.data_dir) == (12, 0.9, "redis://example:6379/0", Path("/srv/x"))
    assert load_settings({"REDIS_URL": "redis://a", "LOOPDESK_REDIS_URL": "redis://b"}).redis_url == "redis://b"


@pytest.mark.parametrize("env, message", [
    ({"LOOPDESK_MAX_REPLY_TOKENS": "many"}, "LOOPDESK_MAX_REPLY_TOKENS='many' is not a valid int"),
    ({"LOOPDESK_CANARY_SHARE": "1.5"}, "within \\[0, 1\\]"),
    ({"LOOPDESK_REDIS_APPENDFSYNC": "never"}, "'always' or 'everysec'"),
    ({"LOOPDESK_KEY_PREFIX": "a:b"}, "no ':'"),
    ({"LOOPDESK_ROLLOUT_STEPS": "30"}, "set LOOPDESK_ROUND_ROLLOUT_STEPS"),
    ({"LOOPDESK_GATE_EVALUATOR": "panel"}, "set LOOPDESK_ROUND_GATE__EVALUATOR"),
    ({"LOOPDESK_GATE_PASS_STATUS": "active"}, "set LOOPDESK_ROUND_GATE__PASS_STATUS"),
])
def test_bad_values_are_refused_with_the_variable_named(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_round_knobs_are_not_settings():
    names = {f.name for f in fields(Settings)}
    assert not names & {"rollout_steps", "gate_evaluator", "gate_pass_status"}
    assert not any(f"LOOPDESK_{name.upper()}".startswith(ROUND_PREFIX) for name in names)


def test_every_setting_is_documented_and_in_the_readme_table():
    assert set(documented_settings()) == {f.name for f in fields(Settings)}
    assert settings_table() in README.read_text(), "README's settings table is stale: paste `loopdesk settings --defaults`"


def test_settings_command_prints_effective_values_with_secrets_masked():
    env = {"LOOPDESK_MAX_REPLY_TOKENS": "12", "LOOPDESK_SECRET_KEY": "s3cret-key",
           "REDIS_URL": "redis://:hunter2@redis.internal:6379/0", "LOOPDESK_REDIS_URL": None}
    result = CliRunner().invoke(loopdesk_cli, ["settings"], env=env)
    assert result.exit_code == 0, result.output
    assert "| `LOOPDESK_MAX_REPLY_TOKENS` | `12` | `64` | longest bot reply generated. |" in result.output
    assert '| `LOOPDESK_SECRET_KEY` | `***` | `""` |' in result.output
    assert '`"redis://:***@redis.internal:6379/0"`' in result.output
    assert "s3cret-key" not in result.output and "hunter2" not in result.output
    defaults = CliRunner().invoke(loopdesk_cli, ["settings", "--defaults"], env=env)
    assert defaults.exit_code == 0 and defaults.output.strip() == settings_table()


def test_settings_round_prints_the_effective_round_config(tmp_path):
    path = tmp_path / "round.json"
    path.write_text(json.dumps({"rollout_steps": 5, "ppo": {"learning_rate": 1e-3}}))
    env = {"LOOPDESK_ROUND_PPO__LEARNING_RATE": "2e-3", "LOOPDESK_ROUND_GATE__PASS_STATUS": "active",
           "LOOPDESK_TEMPERATURE": "0.9"}
    result = CliRunner().invoke(loopdesk_cli, ["settings", "--round-config", str(path)], env=env)
    assert result.exit_code == 0, result.output
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:3] for line in result.output.splitlines()[2:]}
    assert rows["`LOOPDESK_ROUND_ROLLOUT_STEPS`"] == ["`5`", "`30`"]
    assert rows["`LOOPDESK_ROUND_PPO__LEARNING_RATE`"] == ["`0.002`", "`0.0005`"]
    assert rows["`LOOPDESK_ROUND_GATE__PASS_STATUS`"] == ['`"active"`', '`"canary"`']
    assert rows["`LOOPDESK_TEMPERATURE` (serving)"] == ["`0.9`", "`0.7`"]
    bad = CliRunner().invoke(loopdesk_cli, ["settings", "--round"], env={"LOOPDESK_ROUND_PPO__NOPE": "1"})
    assert bad.exit_code == 2 and "unknown variable LOOPDESK_ROUND_PPO__NOPE" in bad.output


def test_no_room_imports_the_loopdesk_command():
    offenders = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "loopdesk.cli"]
    assert offenders == []
