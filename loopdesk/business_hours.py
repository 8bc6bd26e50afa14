"""When the support team answers chats: ``Settings.business_hours`` parsed, and the next opening.

The setting is one or more spans separated by ``;`` and then an IANA time zone::

    Mon-Fri 08:00-18:00 Europe/London
    Mon-Fri 08:00-18:00; Sat 10:00-14:00 Europe/London
    Mon,Wed,Fri 09:00-12:30 America/New_York

Days are ``Mon`` … ``Sun``, a range (``Mon-Fri``; ``Fri-Mon`` wraps over the weekend) or a list
(``Mon,Wed``); a span's times are ``HH:MM-HH:MM`` on the same day (``24:00`` ends at midnight). An
empty setting sets no hours: agents' presence alone decides whether a person can take a chat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
EXAMPLE = "Mon-Fri 08:00-18:00 Europe/London"
_SPAN = re.compile(r"^(?P<days>[A-Za-z,-]+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$")


class BusinessHoursError(ValueError):
    """The business hours are not in the format this module reads; the message says what is wrong."""


@dataclass(frozen=True)
class Span:
    """Open from ``start`` to ``end`` (minutes after local midnight) on each of ``weekdays`` (0 = Monday)."""

    weekdays: frozenset[int]
    start: int
    end: int


@dataclass(frozen=True)
class BusinessHours:
    """The team's opening hours in one time zone."""

    spans: tuple[Span, ...]
    zone: ZoneInfo

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` (an aware datetime) falls within a span."""
        local = at.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        return any(local.weekday() in s.weekdays and s.start <= minute < s.end for s in self.spans)

    def next_opening(self, at: datetime) -> datetime | None:
        """The start of the next span after ``at`` (None while open), in the hours' time zone."""
        if self.is_open(at):
            return None
        local = at.astimezone(self.zone)
        starts = [_local(local.date() + timedelta(days=d), s.start, self.zone)
                  for d in range(8) for s in self.spans if (local.weekday() + d) % 7 in s.weekdays]
        return min(t for t in starts if t > local)

    def when_back(self, at: datetime) -> str:
        """``"today at 14:00"``, ``"tomorrow at 08:00"`` or ``"Monday at 08:00"``, with the zone; "" while open."""
        opening = self.next_opening(at)
        if opening is None:
            return ""
        days = (opening.date() - at.astimezone(self.zone).date()).days
        day = "today" if days == 0 else "tomorrow" if days == 1 else DAY_NAMES[opening.weekday()]
        return f"{day} at {opening:%H:%M} ({self.zone.key} time)"


def _local(day: date, minute: int, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone) + timedelta(minutes=minute)


def parse_business_hours(text: str) -> BusinessHours | None:
    """The hours ``text`` names, or None for an empty setting (no set hours).

    Raises:
        BusinessHoursError: the text does not follow the format in the module docstring.
    """
    text = text.strip()
    if not text:
        return None
    head, _, zone_name = text.rpartition(" ")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BusinessHoursError(f"business hours {text!r} must end with an IANA time zone such as "
                                 f"Europe/London (e.g. {EXAMPLE!r}); {zone_name!r} is not one") from None
    if not head.strip():
        raise BusinessHoursError(f"business hours {text!r} name a time zone but no days and times: e.g. {EXAMPLE!r}")
    return BusinessHours(tuple(_span(part.strip(), text) for part in head.split(";")), zone)


def _span(part: str, text: str) -> Span:
    match = _SPAN.match(part)
    if not match:
        raise BusinessHoursError(f"business hours {text!r}: {part!r} is not 'DAYS HH:MM-HH:MM' (e.g. {EXAMPLE!r})")
    start, end = _minute(match["start"], text), _minute(match["end"], text)
    if start >= end:
        raise BusinessHoursError(f"business hours {text!r}: {part!r} ends before it starts "
                                 "(a span cannot run past midnight; split it in two)")
    return Span(_weekdays(match["days"], text), start, end)


def _minute(clock: str, text: str) -> int:
    hours, minutes = (int(x) for x in clock.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise BusinessHoursError(f"business hours {text!r}: {clock!r} is not a time between 00:00 and 24:00")
    return hours * 60 + minutes


def _weekdays(days: str, text: str) -> frozenset[int]:
    chosen: set[int] = set()
    for item in days.split(","):
        first, _, last = item.partition("-")
        a, b = _day(first, text), _day(last, text) if last else None
        chosen.update([a] if b is None else [(a + i) % 7 for i in range((b - a) % 7 + 1)])
    return frozenset(chosen)


def _day(name: str, text: str) -> int:
    key = name.strip().capitalize()
    if key not in DAYS:
        raise BusinessHoursError(f"business hours {text!r}: {name!r} is not a day; use {', '.join(DAYS)}")
    return DAYS.index(key)
