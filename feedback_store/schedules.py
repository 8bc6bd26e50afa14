"""Retraining schedules: cron expressions kept in Redis.

A cron expression can be well-formed and still never fire (``0 0 30 2 *``: February has no 30th):
one is refused when it is stored, and a schedule that cannot be read or evaluated (stored before
that check, or written into Redis by hand) is skipped by ``due`` with a warning, never fatal.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone

import redis
from croniter import CroniterError, croniter
from pydantic import ValidationError

from feedback_store.errors import NotFoundError, ValidationFailed
from feedback_store.ids import SCHEDULE
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Schedule
from loopdesk.excerpts import quoted

log = logging.getLogger(__name__)

HORIZON_YEARS = 5
"""A schedule must fire within this many years of any moment (croniter looks no further)."""

_SET_ENABLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no schedule ' .. ARGV[1]) end
return redis.call('HSET', KEYS[1], 'enabled', ARGV[2])
"""


def _times(cron: str, after: float) -> croniter:
    return croniter(cron, datetime.fromtimestamp(after, tz=timezone.utc), max_years_between_matches=HORIZON_YEARS)


def next_runs(cron: str, count: int = 3, after: float | None = None) -> list[datetime]:
    """The next ``count`` times (UTC) a cron expression fires after ``after`` (default now); fewer, or
    none, when it stops firing within ``HORIZON_YEARS`` of the last one."""
    itr = _times(cron, after if after is not None else time.time())
    runs = []
    try:
        for _ in range(count):
            runs.append(itr.get_next(datetime))
    except CroniterError:
        pass
    return runs


def check_cron(cron: str) -> str:
    """``cron`` stripped, if it is a 5-field expression that fires within ``HORIZON_YEARS``; else
    ValidationFailed saying what is wrong."""
    cron = cron.strip()
    shown = quoted(cron)
    try:
        Schedule(id="check", cron=cron, created_at=0.0)
    except ValidationError as exc:
        raise ValidationFailed(f"cron {shown}: " + exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    if not next_runs(cron, 1):
        raise ValidationFailed(f"cron {shown} never fires within {HORIZON_YEARS} years: check that the day "
                               "exists in the month (there is no 30 February or 31 April)")
    return cron


def _parse(fields: dict[str, str]) -> Schedule:
    return Schedule(id=fields["id"], cron=fields["cron"], enabled=fields["enabled"] == "1",
                    created_at=float(fields["created_at"]))


class Schedules:
    """CRUD on schedules plus the last time each fired (for the scheduler)."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r = client
        self._keys = keys
        self._set_enabled = Script(client, _SET_ENABLED)

    def add(self, cron: str, enabled: bool = True) -> Schedule:
        """Store a schedule; ValidationFailed for a cron expression that is malformed or never fires."""
        schedule = Schedule(id=uuid.uuid4().hex[:12], cron=check_cron(cron), enabled=enabled, created_at=time.time())
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._keys.schedule(schedule.id), mapping={
            "id": schedule.id, "cron": schedule.cron, "enabled": int(enabled),
            "created_at": schedule.created_at, "last_fired": schedule.created_at})
        pipe.sadd(self._keys.schedules(), schedule.id)
        pipe.execute()
        return schedule

    def get(self, schedule_id: str) -> Schedule:
        fields = self._r.hgetall(self._keys.schedule(schedule_id))
        if not fields:
            raise NotFoundError(f"no schedule {schedule_id!r}")
        return _parse(fields)

    def read_all(self) -> tuple[list[Schedule], dict[str, str]]:
        """Every stored schedule (oldest first), and the ids of those that cannot be read, with why."""
        members = sorted(self._r.smembers(self._keys.schedules()))
        unreadable = {i: SCHEDULE.problem(i) for i in members if not SCHEDULE.valid(i)}
        ids = [i for i in members if i not in unreadable]
        pipe = self._r.pipeline(transaction=False)
        for schedule_id in ids:
            pipe.hgetall(self._keys.schedule(schedule_id))
        schedules = []
        for schedule_id, fields in zip(ids, pipe.execute()):
            if not fields:
                continue
            try:
                schedules.append(_parse(fields))
            except (KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                unreadable[schedule_id] = f"unreadable schedule record: {type(exc).__name__}: {str(exc)[:200]}"
        return sorted(schedules, key=lambda s: s.created_at), unreadable

    def list(self) -> list[Schedule]:
        """The readable schedules, oldest first (``read_all`` also names the others)."""
        return self.read_all()[0]

    def set_enabled(self, schedule_id: str, enabled: bool) -> Schedule:
        self._set_enabled([self._keys.schedule(schedule_id)], [schedule_id, int(enabled)])
        return self.get(schedule_id)

    def delete(self, schedule_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._keys.schedule(schedule_id))
        pipe.srem(self._keys.schedules(), schedule_id)
        if not any(pipe.execute()):
            raise NotFoundError(f"no schedule {schedule_id!r}")

    def due(self, now: float | None = None) -> list[Schedule]:
        """Enabled schedules that fired since they were last handled; marks them handled.

        Claiming uses HSET on ``last_fired`` under WATCH, so two schedulers never both fire one. A
        schedule that cannot be read or never fires again is skipped with a warning.
        """
        now = time.time() if now is None else now
        schedules, unreadable = self.read_all()
        for schedule_id, problem in unreadable.items():
            log.warning("schedule %s skipped: %s", schedule_id, problem)
        fired = []
        for schedule in schedules:
            if not schedule.enabled:
                continue
            key = self._keys.schedule(schedule.id)

            def claim(pipe: redis.client.Pipeline, cron: str = schedule.cron) -> bool:
                last = float(pipe.hget(key, "last_fired") or 0)
                if _times(cron, last).get_next(float) > now:
                    return False
                pipe.multi()
                pipe.hset(key, "last_fired", now)
                return True

            try:
                claimed = self._r.transaction(claim, key, value_from_callable=True)
            except ValueError as exc:  # croniter's errors are ValueErrors too
                log.warning("schedule %s (%r) skipped: %s", schedule.id, schedule.cron, exc)
                continue
            if claimed:
                fired.append(schedule)
        return fired
