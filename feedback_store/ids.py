"""The shapes of the ids and numbers that become parts of Redis keys, checked before a key is built.

An id with a character ids never have (``:`` above all) would name another key, of another type:
``Keys`` refuses it with ``ValidationFailed`` and a message that says what an id looks like. The
HTTP layer checks path parameters with the same kinds before they reach the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from feedback_store.errors import ValidationFailed
from feedback_store.records import HASH_PATTERN, ID_PATTERN, VERSION_PATTERN
from feedback_store.users import NAME_PATTERN
from loopdesk.articles import ARTICLE_ID_PATTERN, TAG_PATTERN
from loopdesk.excerpts import quoted

MAX_INDEX = 2**31 - 1
"""The largest turn index or version number a key or a list position may hold."""


@dataclass(frozen=True)
class IdKind:
    """What one kind of id looks like: its name, its pattern and the rule in words."""

    name: str
    pattern: re.Pattern[str]
    rule: str

    def valid(self, value: object) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def problem(self, value: object) -> str:
        """Why ``value`` is no id of this kind (shortened, so a huge value makes a short message)."""
        return f"{quoted(value, 80)} is not a valid {self.name}: {self.rule}"

    def check(self, value: object) -> str:
        """``value`` if it is an id of this kind, else ValidationFailed."""
        if not self.valid(value):
            raise ValidationFailed(self.problem(value))
        return value  # type: ignore[return-value]


_ID_RULE = "letters, digits, '_' and '-' (1 to 64)"
CONVERSATION = IdKind("conversation id", re.compile(ID_PATTERN), _ID_RULE)
RUN = IdKind("training run id", re.compile(ID_PATTERN), _ID_RULE)
SCHEDULE = IdKind("schedule id", re.compile(ID_PATTERN), _ID_RULE)
PROCESS = IdKind("worker or scheduler id", re.compile(ID_PATTERN), _ID_RULE)
USER = IdKind("user name", re.compile(NAME_PATTERN), _ID_RULE)
ADAPTER_VERSION = IdKind("adapter version", re.compile(VERSION_PATTERN),
                         "letters, digits, '.', '_' and '-' (1 to 64, starting with a letter or digit)")
ARTICLE = IdKind("help article id", re.compile(ARTICLE_ID_PATTERN),
                 "lowercase letters, digits and '-' (1 to 64, starting with a letter or digit)")
TAG = IdKind("tag", TAG_PATTERN, "a lowercase word of letters, digits and '_' (1 to 32, starting with a letter)")
RATER = IdKind("rater key", re.compile(HASH_PATTERN), "32 hexadecimal digits, or empty")


def check_index(value: object, what: str = "turn index") -> int:
    """``value`` if it is an int from 0 to ``MAX_INDEX`` (not a bool), else ValidationFailed."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
        shown = "a number above that" if isinstance(value, int) and value > MAX_INDEX else quoted(value, 40)
        raise ValidationFailed(f"a {what} is a whole number from 0 to {MAX_INDEX}, not {shown}")
    return value
