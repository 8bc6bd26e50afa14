"""Console accounts (experts, operators, admins) with hashed passwords."""

from __future__ import annotations

import time
from typing import Literal

import redis
from pydantic import BaseModel, Field, ValidationError
from werkzeug.security import check_password_hash, generate_password_hash

from feedback_store.errors import NotFoundError, ValidationFailed
from feedback_store.lua import Script

Role = Literal["expert", "operator", "admin"]
ROLES: tuple[str, ...] = ("expert", "operator", "admin")
MIN_PASSWORD = 8


_ADD = """
-- KEYS: user, users   ARGV: name, role, created_at, password hash
if redis.call('EXISTS', KEYS[1]) == 1 then return fail('CONFLICT', 'a user named ' .. ARGV[1] .. ' exists already') end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'role', ARGV[2], 'created_at', ARGV[3], 'password_hash', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


class User(BaseModel):
    """A console account; the password is kept only as a werkzeug hash."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    role: Role
    created_at: float


class Users:
    """Create, check and list console accounts."""

    def __init__(self, client: redis.Redis, keys):
        self._r = client
        self._keys = keys
        self._add = Script(client, _ADD)

    def add(self, name: str, role: str, password: str) -> User:
        """Create an account; ConflictError if the name is taken."""
        try:
            user = User(name=name, role=role, created_at=time.time())
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(f"invalid user {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if len(password) < MIN_PASSWORD:
            raise ValidationFailed(f"the password must have at least {MIN_PASSWORD} characters")
        self._add([self._keys.user(name), self._keys.users()],
                  [name, role, user.created_at, generate_password_hash(password)])
        return user

    def get(self, name: str) -> User:
        fields = self._r.hgetall(self._keys.user(name))
        if not fields:
            raise NotFoundError(f"no user {name!r}")
        return User(name=fields["name"], role=fields["role"], created_at=float(fields["created_at"]))

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches, else None (same answer for unknown names)."""
        stored = self._r.hget(self._keys.user(name), "password_hash")
        if stored is None or not check_password_hash(stored, password):
            return None
        return self.get(name)

    def list(self) -> list[User]:
        return [self.get(name) for name in sorted(self._r.smembers(self._keys.users()))]
