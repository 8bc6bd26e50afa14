"""Business hours: the setting's format, clear errors for bad values, being open across time zones and
summer time, and when the team is back."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from loopdesk.business_hours import BusinessHoursError, parse_business_hours
from loopdesk.config import SettingsError, load_settings

LONDON = "Mon-Fri 08:00-18:00; Sat 10:00-14:00 Europe/London"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("moment, is_open, back", [
    ("2025-01-06 07:59", False, "today at 08:00 (Europe/London time)"),  # Monday, GMT = UTC in winter
    ("2025-01-06 08:00", True, ""),
    ("2025-01-06 17:59", True, ""),
    ("2025-01-06 18:00", False, "tomorrow at 08:00 (Europe/London time)"),
    ("2025-01-10 19:00", False, "tomorrow at 10:00 (Europe/London time)"),  # Friday evening → Saturday
    ("2025-01-11 14:30", False, "Monday at 08:00 (Europe/London time)"),  # Saturday afternoon
    ("2025-07-07 07:30", True, ""),  # 08:30 in London in summer (BST = UTC+1)
    ("2025-07-07 17:30", False, "tomorrow at 08:00 (Europe/London time)"),  # 18:30 BST
])
def test_open_hours_follow_the_zone_and_summer_time(moment: str, is_open: bool, back: str):
    hours = parse_business_hours(LONDON)
    assert hours.is_open(utc(moment)) is is_open
    assert hours.when_back(utc(moment)) == back


def test_the_next_opening_is_an_instant_in_the_hours_zone():
    opening = parse_business_hours(LONDON).next_opening(utc("2025-07-06 12:00"))  # a Sunday
    assert opening.isoformat() == "2025-07-07T08:00:00+01:00"


def test_day_ranges_wrap_and_lists_and_midnight_are_understood():
    hours = parse_business_hours("Fri-Mon 20:00-24:00; tue,Thu 09:00-09:30 America/New_York")
    assert {d for s in hours.spans for d in s.weekdays} == {0, 1, 3, 4, 5, 6}
    assert hours.is_open(utc("2025-01-07 14:15"))  # Tuesday 09:15 in New York (UTC-5)
    assert hours.is_open(utc("2025-01-11 04:59"))  # Friday 23:59 in New York
    assert not hours.is_open(utc("2025-01-08 14:15"))  # Wednesday


def test_no_hours_set_means_none():
    assert parse_business_hours("") is None and parse_business_hours("  ") is None
    assert load_settings({}).opening_hours is None


@pytest.mark.parametrize("value, message", [
    ("Mon-Fri 08:00-18:00", "must end with an IANA time zone"),
    ("Mon-Fri 08:00-18:00 Mars/Olympus", "'Mars/Olympus' is not one"),
    ("Europe/London", "no days and times"),
    ("Mon-Fry 08:00-18:00 Europe/London", "'Fry' is not a day"),
    ("Mon-Fri 18:00-08:00 Europe/London", "ends before it starts"),
    ("Mon-Fri 8-18 Europe/London", "is not 'DAYS HH:MM-HH:MM'"),
    ("Mon 08:00-25:00 UTC", "'25:00' is not a time"),
    ("Mon 08:61-09:00 UTC", "'08:61' is not a time"),
])
def test_a_bad_setting_is_refused_with_what_is_wrong(value: str, message: str):
    with pytest.raises(BusinessHoursError, match=message):
        parse_business_hours(value)
    with pytest.raises(SettingsError, match="LOOPDESK_BUSINESS_HOURS: .*" + message):
        load_settings({"LOOPDESK_BUSINESS_HOURS": value})


def test_the_reask_limit_cannot_be_negative():
    assert load_settings({}).handoff_after_reasks == 2
    with pytest.raises(SettingsError, match="LOOPDESK_HANDOFF_AFTER_REASKS"):
        load_settings({"LOOPDESK_HANDOFF_AFTER_REASKS": "-1"})
