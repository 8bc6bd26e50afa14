"""Input quoted in an error message, cut short: a 30,000-character id makes a short message, not a huge one."""

from __future__ import annotations


def quoted(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut after ``limit`` characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def cut(text: str, limit: int = 40) -> str:
    """``text`` itself, cut after ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "…"
