"""Settings come from LOOPDESK_* variables, are validated, and are all documented in the README."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from loopdesk.config import Settings, SettingsError, documented_settings, load_settings, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


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
])
def test_bad_values_are_refused_with_the_variable_named(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_every_setting_is_documented_and_in_the_readme_table():
    assert set(documented_settings()) == {f.name for f in fields(Settings)}
    assert settings_table() in README.read_text(), "README's settings table is stale: paste `loopdesk settings`"
