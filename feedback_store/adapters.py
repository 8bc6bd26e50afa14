"""The adapter registry: versions, their status machine, the active/canary pointers, announcements."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import redis

from feedback_store.errors import InvalidTransitionError, NotFoundError, ValidationFailed
from feedback_store.keys import Keys
from feedback_store.lua import Script
from feedback_store.records import BASE_VERSION, AdapterStatus, AdapterVersion

# Which statuses each status may move to; "active" is reached by promote/rollback only.
TRANSITIONS: dict[str, set[str]] = {
    "candidate": {"canary", "active", "rejected"},
    "canary": {"active", "rejected", "retired"},
    "active": {"retired", "rejected"},
    "retired": {"active", "canary"},
    "rejected": set(),
}


_REGISTER = """
-- KEYS: adapter, adapters index   ARGV: version, created_at, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return fail('CONFLICT', 'adapter ' .. ARGV[1] .. ' is already registered')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def _parse(fields: dict[str, str]) -> AdapterVersion:
    data: dict[str, Any] = dict(fields)
    data["metrics"] = json.loads(data.get("metrics", "{}"))
    return AdapterVersion(**data)


class Adapters:
    """Registry operations; every status change is one WATCH/MULTI transaction plus its announcement."""

    def __init__(self, client: redis.Redis, keys: Keys, default_canary_share: float):
        self._r = client
        self._keys = keys
        self._default_share = default_canary_share
        self._register = Script(client, _REGISTER)

    def next_version(self) -> str:
        """Reserve a new version name (``v0001``, ``v0002``, …)."""
        return f"v{self._r.incr(self._keys.adapter_seq()):04d}"

    def register(self, adapter: AdapterVersion) -> AdapterVersion:
        """Record a freshly released adapter as a candidate (its files must already be in place)."""
        if adapter.status != "candidate":
            raise ValidationFailed("a new adapter is registered as a candidate")
        fields = adapter.model_dump()
        fields["metrics"] = json.dumps(adapter.metrics)
        flat = [item for pair in fields.items() for item in pair]
        self._register([self._keys.adapter(adapter.version), self._keys.adapters()],
                       [adapter.version, adapter.created_at, *flat])
        return adapter

    def get(self, version: str) -> AdapterVersion:
        fields = self._r.hgetall(self._keys.adapter(version))
        if not fields:
            raise NotFoundError(f"no adapter version {version!r}")
        return _parse(fields)

    def list(self, limit: int = 100) -> list[AdapterVersion]:
        """Newest first."""
        versions = self._r.zrevrange(self._keys.adapters(), 0, limit - 1)
        pipe = self._r.pipeline(transaction=False)
        for version in versions:
            pipe.hgetall(self._keys.adapter(version))
        return [_parse(f) for f in pipe.execute() if f]

    def active(self) -> str:
        """The version new conversations get by default (``base`` when none was promoted)."""
        return self._r.get(self._keys.adapter_pointer("active")) or BASE_VERSION

    def canary(self) -> str | None:
        return self._r.get(self._keys.adapter_pointer("canary"))

    def canary_share(self) -> float:
        value = self._r.get(self._keys.canary_share())
        return self._default_share if value is None else float(value)

    def set_canary_share(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValidationFailed(f"canary share must be within [0, 1], got {share}")
        self._r.set(self._keys.canary_share(), share)

    def update_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        """Merge metrics into a version's record (evaluation, live CSAT)."""
        def apply(pipe: redis.client.Pipeline) -> None:
            current = self._read(pipe, version)
            pipe.multi()
            pipe.hset(self._keys.adapter(version), "metrics", json.dumps({**current.metrics, **metrics}))
        self._r.transaction(apply, self._keys.adapter(version))

    # status changes -------------------------------------------------------------------
    def promote(self, version: str, reason: str = "") -> AdapterVersion:
        """Make ``version`` active; the previous active one is retired."""
        return self._move(version, "active", reason, event="promoted")

    def send_to_canary(self, version: str, reason: str = "") -> AdapterVersion:
        """Serve ``version`` to the canary share; a previous canary is retired."""
        return self._move(version, "canary", reason, event="canary")

    def reject(self, version: str, reason: str) -> AdapterVersion:
        """Mark ``version`` rejected with the reason (a canary stops being served)."""
        if not reason:
            raise ValidationFailed("a rejection needs a reason")
        if self.active() == version:
            raise InvalidTransitionError(f"{version} is active: roll it back instead of rejecting it")
        return self._move(version, "rejected", reason, event="rejected")

    def rollback(self, reason: str, to_version: str | None = None) -> str:
        """Reject the active version and make ``to_version`` (default: its parent) active again."""
        current = self.active()
        if current == BASE_VERSION:
            raise InvalidTransitionError("nothing to roll back: the base model is active")
        target = to_version or self.get(current).parent
        self._move(current, "rejected", reason, event="rolled_back", replacement=target)
        return target

    def _read(self, pipe: redis.client.Pipeline, version: str) -> AdapterVersion:
        fields = pipe.hgetall(self._keys.adapter(version))
        if not fields:
            raise NotFoundError(f"no adapter version {version!r}")
        return _parse(fields)

    def _move(self, version: str, status: AdapterStatus, reason: str, event: str,
              replacement: str | None = None) -> AdapterVersion:
        k = self._keys
        watched = [k.adapter(version), k.adapter_pointer("active"), k.adapter_pointer("canary")]
        if replacement and replacement != BASE_VERSION:
            watched.append(k.adapter(replacement))
        now = time.time()

        def apply(pipe: redis.client.Pipeline) -> AdapterVersion:
            adapter = self._read(pipe, version)
            if status not in TRANSITIONS[adapter.status]:
                raise InvalidTransitionError(f"adapter {version} is {adapter.status}; it cannot become {status}")
            active = pipe.get(k.adapter_pointer("active"))
            canary = pipe.get(k.adapter_pointer("canary"))
            target = self._read(pipe, replacement) if replacement and replacement != BASE_VERSION else None
            if target is not None and "active" not in TRANSITIONS[target.status]:
                raise InvalidTransitionError(f"cannot roll back to {replacement}: it is {target.status}")
            pipe.multi()
            pipe.hset(k.adapter(version), mapping={"status": status, "reason": reason, "updated_at": now})
            if status in ("active", "canary"):
                previous = active if status == "active" else canary
                if previous and previous != version:
                    pipe.hset(k.adapter(previous), mapping={"status": "retired", "updated_at": now})
                pipe.set(k.adapter_pointer(status), version)
            if canary == version:
                pipe.delete(k.adapter_pointer("canary"))
            if replacement is not None:
                if target is None:
                    pipe.delete(k.adapter_pointer("active"))
                else:
                    pipe.hset(k.adapter(replacement), mapping={"status": "active", "updated_at": now})
                    pipe.set(k.adapter_pointer("active"), replacement)
            if replacement is not None:
                active_after = replacement
            else:
                active_after = version if status == "active" else (active or BASE_VERSION)
            announcement = {"event": event, "version": version, "status": status,
                            "active": active_after, "reason": reason, "at": now}
            pipe.publish(k.announce_channel(), json.dumps(announcement))
            return adapter.model_copy(update={"status": status, "reason": reason, "updated_at": now})

        return self._r.transaction(apply, *watched, value_from_callable=True)

    # announcements --------------------------------------------------------------------
    def listen(self, stop: Callable[[], bool], timeout_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yield adapter announcements as they arrive until ``stop()`` is true."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self._keys.announce_channel())
        try:
            while not stop():
                message = pubsub.get_message(timeout=timeout_s)
                if message and message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            pubsub.close()
