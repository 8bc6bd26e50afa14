"""The settings' reference: each field's default and meaning read from the ``Parameters:`` block of its
class's docstring, and the Markdown tables made of them (``loopdesk settings``, the README's settings
table, ``loopdesk settings --round``)."""

from __future__ import annotations

import json
import re
from typing import Any

from loopdesk.config import SECRETS, Settings, redacted_url


def documented_fields(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (default, meaning)}`` parsed from the ``Parameters:`` block of ``cls``'s docstring
    (default "" where an entry names none)."""
    block = (cls.__doc__ or "").split("Parameters:", 1)[1]
    documented = {}
    for entry in filter(str.strip, re.split(r"\n\s{8}(?=\w+ \()", "\n" + block)):
        match = re.match(r"\s*(\w+) \((.*?)\):\s*(.*)", entry, re.S)
        if match:
            name, kind_and_default, meaning = match.groups()
            default = kind_and_default.split(", default ", 1)[1] if ", default " in kind_and_default else ""
            documented[name] = (default, " ".join(meaning.split()))
    return documented


def documented_settings() -> dict[str, tuple[str, str]]:
    """``{field: (default, meaning)}`` of ``Settings``."""
    return documented_fields(Settings)


def shown(value: Any) -> str:
    """A value as a variable would spell it: strings, lists and dicts as JSON, the rest as ``str``."""
    return json.dumps(value) if isinstance(value, (str, list, dict)) else str(value)


def masked(name: str, value: Any) -> str:
    """``shown(value)`` with secrets hidden: a set secret as ``***``, a URL's password as ``***``."""
    if name in SECRETS and value:
        return "***"
    if isinstance(value, str) and "://" in value:
        value = redacted_url(value)
    return shown(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; ``|`` in a cell is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _variable(name: str) -> str:
    return "`REDIS_URL` / `LOOPDESK_REDIS_URL`" if name == "redis_url" else f"`LOOPDESK_{name.upper()}`"


def settings_table() -> str:
    """The README's settings table: every environment variable, its default and meaning."""
    rows = [[_variable(name), f"`{default}`", meaning] for name, (default, meaning) in documented_settings().items()]
    return markdown_table(["environment variable", "default", "meaning"], rows)


def effective_settings_table(settings: Settings) -> str:
    """Every environment variable with its value in ``settings`` (secrets masked), default and meaning."""
    rows = [[_variable(name), f"`{masked(name, getattr(settings, name))}`", f"`{default}`", meaning]
            for name, (default, meaning) in documented_settings().items()]
    return markdown_table(["environment variable", "effective value", "default", "meaning"], rows)
