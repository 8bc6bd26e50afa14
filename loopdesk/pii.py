"""Masking personal data in free text before it is stored or logged: ``mask_pii``.

Three kinds are masked, in this order:

- **email addresses** (``name@host.tld``) → ``[email]``;
- **payment card numbers** → ``[card]``: 13 to 19 digits that pass the Luhn check, unbroken or in
  groups of at least 3 digits split by single spaces or dashes (``4111 1111 1111 1111``,
  ``3782-822463-10005``); shorter groups around one (``12/25`` after it) are left as they are;
- **phone numbers** → ``[phone]``: 9 to 15 digits (E.164's longest) in groups split by single
  spaces, dots or dashes, optionally after ``+`` and with a group in parentheses
  (``0800 555 0199``, ``+44 (0)20 7946 0958``, ``(555) 123-4567``, ``1-800-555-0199``). Without
  a ``+``, every group has 2 or more digits except a leading ``1-``. A group that belongs to a
  time, a decimal or a date written with ``:``, ``,`` or ``/`` beside it is not counted
  (``2024-01-15 10:30`` is a date and a time, not a phone number).

Ordinary numbers stay: quantities (``30 days``), order numbers up to 8 digits or after ``#``,
prices under a million, dates, times. What is masked is a pattern, not a meaning: a 9-digit order
number without ``#`` is masked as a phone number, and a name or a postal address is not masked.

``page_url`` drops the query string, fragment and credentials from a URL (or a path), where
tokens and e-mail addresses travel.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

EMAIL_MASK = "[email]"
CARD_MASK = "[card]"
PHONE_MASK = "[phone]"

EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
CARD_RUN = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*")
PHONE_RUN = re.compile(r"(?<![\d+#])(?:\+ ?)?(?:\(\d{1,5}\)|\d+)(?:[ .-]?(?:\(\d{1,5}\)|\d+))*")
GROUP = re.compile(r"\(\d+\)|\d+")
CARD_DIGITS = (13, 19)
CARD_GROUP_MIN = 3
PHONE_DIGITS = (9, 15)
OTHER_NUMBER_MARKS = ":,/"  # beside a group: a time, a decimal or a date


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a digit string (payment card numbers pass it)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _replace_spans(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + mask + text[end:]
    return text


def _card_spans(text: str) -> list[tuple[int, int]]:
    """Spans of consecutive digit groups (3+ digits each) with 13-19 Luhn-valid digits; the longest first."""
    spans = []
    for run in CARD_RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in re.finditer(r"\d+", run.group())]
        i = 0
        while i < len(groups):
            best, digits, j = None, "", i
            while j < len(groups) and groups[j][1] - groups[j][0] >= CARD_GROUP_MIN:
                digits += text[groups[j][0]:groups[j][1]]
                if len(digits) > CARD_DIGITS[1]:
                    break
                if len(digits) >= CARD_DIGITS[0] and luhn_valid(digits):
                    best = j
                j += 1
            if best is None:
                i += 1
                continue
            spans.append((groups[i][0], groups[best][1]))
            i = best + 1
    return spans


def _beside_other_number(text: str, start: int, end: int) -> tuple[bool, bool]:
    """Whether the span's first / last group touches a time, decimal or date mark followed by a digit."""
    before = start >= 2 and text[start - 1] in OTHER_NUMBER_MARKS and text[start - 2].isdigit()
    after = end + 1 < len(text) and text[end] in OTHER_NUMBER_MARKS and text[end + 1].isdigit()
    return before, after


def _phone_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for run in PHONE_RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start(), m.group()) for m in GROUP.finditer(run.group())]
        drop_first, drop_last = _beside_other_number(text, run.start(), run.end())
        start = run.start()
        if drop_first:
            groups = groups[1:]
            start = groups[0][0] if groups else run.end()
        if drop_last:
            groups = groups[:-1]
        if not groups:
            continue
        digits = sum(len(g[2].strip("()")) for g in groups)
        if not PHONE_DIGITS[0] <= digits <= PHONE_DIGITS[1]:
            continue
        plus = text[start] == "+"
        first_end = groups[0][1]
        leading_one = first_end < len(text) and text[first_end] == "-"
        if not plus and any(len(g[2]) < 2 and not (i == 0 and leading_one) for i, g in enumerate(groups)):
            continue
        spans.append((start, groups[-1][1]))
    return spans


def mask_pii(text: str) -> str:
    """``text`` with email addresses, payment card numbers and phone numbers replaced by ``[email]``,
    ``[card]`` and ``[phone]`` (the rules are in the module docstring). Idempotent; a value that is not a
    string is returned as it is (for the record's validation to refuse)."""
    if not isinstance(text, str) or not text:
        return text
    text = EMAIL.sub(EMAIL_MASK, text)
    text = _replace_spans(text, _card_spans(text), CARD_MASK)
    return _replace_spans(text, _phone_spans(text), PHONE_MASK)


def page_url(value: str) -> str:
    """A URL or path without its query string, fragment and credentials (``https://shop.example/boots``);
    any other value unchanged."""
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    if value.startswith("/"):
        return parts.path
    return value
