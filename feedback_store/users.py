"""Console accounts (experts, agents, operators, admins): hashed passwords, roles, the name customers
see on an agent's replies, disabling, the session
generation that revokes signed-in sessions, and the per-account sign-in lockout.

A signed session records the account's session generation when it was issued; it is valid only
while the generation is unchanged. Every change to an account (sign-out, disable, enable, role,
password, removal) increments it, which ends all of that account's sessions at once. The
generation key outlives a removed account, so a re-created name never revives an old cookie.

At least one enabled admin remains once there is one: disabling, removing or demoting the last
enabled admin is refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

import redis
from pydantic import BaseModel, Field, ValidationError
from werkzeug.security import check_password_hash, generate_password_hash

from feedback_store.errors import (AccountDisabledError, AccountLockedError, NotFoundError,
                                   ValidationFailed)
from feedback_store.lua import Script

Role = Literal["expert", "agent", "operator", "admin"]
ROLES: tuple[str, ...] = ("expert", "agent", "operator", "admin")
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MIN_PASSWORD = 8


_ADD = """
-- KEYS: user, users   ARGV: name, role, created_at, password hash, display name
if redis.call('EXISTS', KEYS[1]) == 1 then return fail('CONFLICT', 'a user named ' .. ARGV[1] .. ' exists already') end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'role', ARGV[2], 'created_at', ARGV[3], 'password_hash', ARGV[4],
           'disabled', '0', 'display_name', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# The admin count reads every account's hash by the key prefix in ARGV[4]: a standalone Redis
# (or one hash slot) holds them all, and scanning the few console accounts keeps the rule exact.
_CHANGE = """
-- KEYS: user, users, sessions   ARGV: name, change, value, user key prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('NOTFOUND', "no user '" .. ARGV[1] .. "'") end
local change, value = ARGV[2], ARGV[3]
local f = redis.call('HMGET', KEYS[1], 'role', 'disabled')
local enabled_admin = f[1] == 'admin' and f[2] ~= '1'
local demotes = change == 'disable' or change == 'remove' or (change == 'role' and value ~= 'admin')
if enabled_admin and demotes then
  local admins = 0
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local other = redis.call('HMGET', ARGV[4] .. name, 'role', 'disabled')
    if other[1] == 'admin' and other[2] ~= '1' then admins = admins + 1 end
  end
  if admins <= 1 then
    return fail('CONFLICT', ARGV[1] .. ' is the last enabled admin: make another account admin first')
  end
end
if change == 'remove' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
elseif change == 'disable' then redis.call('HSET', KEYS[1], 'disabled', '1')
elseif change == 'enable' then redis.call('HSET', KEYS[1], 'disabled', '0')
elseif change == 'role' then redis.call('HSET', KEYS[1], 'role', value)
elseif change == 'password' then redis.call('HSET', KEYS[1], 'password_hash', value)
end
return redis.call('INCR', KEYS[3])
"""

_FAIL = """
-- KEYS: failures, lock   ARGV: most failures, window ms, lock ms
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if failures < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return tonumber(ARGV[3])
"""


class User(BaseModel):
    """A console account; the password is kept only as a werkzeug hash."""

    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    created_at: float
    display_name: str = Field(default="", max_length=64, description="shown to customers on an agent's replies")
    disabled: bool = False
    session_generation: int = Field(default=0, description="sessions issued under another one are void")

    @property
    def shown_name(self) -> str:
        """The display name, or the account name when there is none."""
        return self.display_name or self.name


@dataclass(frozen=True)
class Lockout:
    """``failures`` failed sign-ins within ``window_s`` lock an account for ``lock_s`` (0 failures: never)."""

    failures: int = 10
    window_s: int = 900
    lock_s: int = 900


class Users:
    """Create, check, change and list console accounts."""

    def __init__(self, client: redis.Redis, keys, lockout: Lockout = Lockout()):
        self._r = client
        self._keys = keys
        self._lockout = lockout
        self._add = Script(client, _ADD)
        self._change = Script(client, _CHANGE)
        self._fail = Script(client, _FAIL)

    def add(self, name: str, role: str, password: str, display_name: str = "") -> User:
        """Create an account (``display_name``: what customers see on an agent's replies); ConflictError if
        the name is taken."""
        try:
            user = User(name=name, role=role, created_at=time.time(), display_name=display_name.strip())
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(f"invalid user {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        self._add([self._keys.user(name), self._keys.users()],
                  [name, role, user.created_at, _password_hash(password), user.display_name])
        return self.get(name)

    def get(self, name: str) -> User:
        """The account with its current session generation; NotFoundError if there is none."""
        user, _ = self._read(name)
        if user is None:
            raise NotFoundError(f"no user {name!r}")
        return user

    def _read(self, name: str) -> tuple[User | None, str | None]:
        """(account, password hash), read in one transaction with the session generation."""
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(self._keys.user(name))
        pipe.get(self._keys.user_sessions(name))
        fields, generation = pipe.execute()
        if not fields:
            return None, None
        user = User(name=fields["name"], role=fields["role"], created_at=float(fields["created_at"]),
                    display_name=fields.get("display_name", ""), disabled=fields.get("disabled") == "1",
                    session_generation=int(generation or 0))
        return user, fields["password_hash"]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches, else None (same answer for unknown names)."""
        user, stored = self._read(name)
        if user is None or not check_password_hash(stored, password):
            return None
        return user

    def sign_in(self, name: str, password: str) -> User | None:
        """Check a console sign-in against the account and its lockout.

        Returns the user (and clears its failure count), or None for a wrong name or password.
        Raises AccountLockedError while the account is locked, even for the right password, and
        when this failure locks it; AccountDisabledError for a disabled account's right password.
        """
        if not re.fullmatch(NAME_PATTERN, name):
            return None
        self._refuse_if_locked(name)
        user = self.authenticate(name, password)
        if user is None:
            self._count_failure(name)
            return None
        if user.disabled:
            raise AccountDisabledError(f"the account {name} is disabled; ask an admin to enable it")
        self._r.delete(self._keys.login_failures(name))
        return user

    def _refuse_if_locked(self, name: str) -> None:
        remaining_ms = self._r.pttl(self._keys.login_lock(name))
        if remaining_ms > 0:
            raise _locked(name, remaining_ms)

    def _count_failure(self, name: str) -> None:
        lock = self._lockout
        if lock.failures <= 0:
            return
        locked_ms = self._fail([self._keys.login_failures(name), self._keys.login_lock(name)],
                               [lock.failures, lock.window_s * 1000, lock.lock_s * 1000])
        if locked_ms:
            raise _locked(name, locked_ms)

    def disable(self, name: str) -> int:
        """Disable the account and end its sessions; returns the new session generation."""
        return self._apply(name, "disable")

    def enable(self, name: str) -> int:
        return self._apply(name, "enable")

    def set_role(self, name: str, role: str) -> int:
        """Give the account ``role``; its sessions end (they were issued for the old role)."""
        if role not in ROLES:
            raise ValidationFailed(f"invalid role {role!r}: one of {', '.join(ROLES)}")
        return self._apply(name, "role", role)

    def set_password(self, name: str, password: str) -> int:
        """Replace the password; every session of the account ends."""
        return self._apply(name, "password", _password_hash(password))

    def remove(self, name: str) -> int:
        return self._apply(name, "remove")

    def end_sessions(self, name: str) -> int:
        """Sign the account out everywhere."""
        return self._apply(name, "sign_out")

    def _apply(self, name: str, change: str, value: str = "") -> int:
        """One atomic change (see _CHANGE), refused for a missing account or the last enabled admin."""
        return int(self._change([self._keys.user(name), self._keys.users(), self._keys.user_sessions(name)],
                                [name, change, value, self._keys.user_prefix()]))

    def list(self) -> list[User]:
        return [self.get(name) for name in sorted(self._r.smembers(self._keys.users()))]


def _password_hash(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(f"the password must have at least {MIN_PASSWORD} characters")
    return generate_password_hash(password)


def _locked(name: str, remaining_ms: int) -> AccountLockedError:
    seconds = max(1, -(-remaining_ms // 1000))
    return AccountLockedError(f"too many failed sign-ins for {name}: the account is locked; "
                              f"try again in {_duration(seconds)}", seconds)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    return f"{-(-seconds // 60)} min"
