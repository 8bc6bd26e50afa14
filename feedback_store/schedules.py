"""Retraining schedules: cron expressions kept in Redis."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import redis
from croniter import croniter
from pydantic import ValidationError

from feedback_store.errors import NotFoundError, ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import Schedule


_SET_ENABLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', 'no schedule ' .. ARGV[1]) end
return redis.call('HSET', KEYS[1], 'enabled', ARGV[2])
"""


def next_runs(cron: str, count: int = 3, after: float | None = None) -> list[datetime]:
    """The next ``count`` times (UTC) a cron expression fires after ``after`` (default now)."""
    base = datetime.fromtimestamp(after if after is not None else time.time(), tz=timezone.utc)
    itr = croniter(cron, base)
    return [itr.get_next(datetime) for _ in range(count)]


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
        try:
            schedule = Schedule(id=uuid.uuid4().hex[:12], cron=cron.strip(), enabled=enabled, created_at=time.time())
        except ValidationError as exc:
            raise ValidationFailed(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
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

    def list(self) -> list[Schedule]:
        pipe = self._r.pipeline(transaction=False)
        for schedule_id in sorted(self._r.smembers(self._keys.schedules())):
            pipe.hgetall(self._keys.schedule(schedule_id))
        return sorted((_parse(f) for f in pipe.execute() if f), key=lambda s: s.created_at)

    def set_enabled(self, schedule_id: str, enabled: bool) -> Schedule:
        self._set_enabled([self._keys.schedule(schedule_id)], [schedule_id, int(enabled)])
        return self.get(schedule_id)

    def delete(self, schedule_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._keys.schedule(schedule_id))
        pipe.srem(self._keys.schedules(), schedule_id)
        if not pipe.execute()[0]:
            raise NotFoundError(f"no schedule {schedule_id!r}")

    def due(self, now: float | None = None) -> list[Schedule]:
        """Enabled schedules that fired since they were last handled; marks them handled.

        Claiming uses HSET on ``last_fired`` under WATCH, so two schedulers never both fire one.
        """
        now = time.time() if now is None else now
        fired = []
        for schedule in self.list():
            if not schedule.enabled:
                continue
            key = self._keys.schedule(schedule.id)

            def claim(pipe: redis.client.Pipeline, cron: str = schedule.cron) -> bool:
                last = float(pipe.hget(key, "last_fired") or 0)
                if croniter(cron, datetime.fromtimestamp(last, tz=timezone.utc)).get_next(float) > now:
                    return False
                pipe.multi()
                pipe.hset(key, "last_fired", now)
                return True

            if self._r.transaction(claim, key, value_from_callable=True):
                fired.append(schedule)
        return fired
