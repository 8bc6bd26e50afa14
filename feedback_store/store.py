"""The one object processes hold: a Redis client plus the operations grouped by record type."""

from __future__ import annotations

import redis

from feedback_store.adapters import Adapters
from feedback_store.annotations import Annotations
from feedback_store.connection import connect
from feedback_store.conversations import Conversations
from feedback_store.erasure import Erasure
from feedback_store.feedback_export import FeedbackExport
from feedback_store.handoffs import Handoffs
from feedback_store.heartbeats import Heartbeats
from feedback_store.keys import Keys
from feedback_store.knowledge import Knowledge
from feedback_store.ratings import Ratings
from feedback_store.retention import Retention
from feedback_store.runs import Runs
from feedback_store.schedules import Schedules
from feedback_store.training_queue import TrainingQueue
from feedback_store.users import Lockout, Users


class FeedbackStore:
    """Entry point: ``store.conversations.start(...)``, ``store.ratings.rate(...)``, …"""

    def __init__(self, client: redis.Redis, settings):
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.conversations = Conversations(client, self.keys)
        self.ratings = Ratings(client, self.keys, settings.rating_correction_window_s, settings.rating_client_cap,
                               settings.rating_client_window_s)
        self.annotations = Annotations(client, self.keys)
        self.handoffs = Handoffs(client, self.keys)
        self.feedback = FeedbackExport(client, self.keys, self.annotations, self.handoffs)
        self.adapters = Adapters(client, self.keys, settings.canary_share)
        self.runs = Runs(client, self.keys, settings.run_lock_ttl_s)
        self.schedules = Schedules(client, self.keys)
        self.users = Users(client, self.keys, Lockout(settings.login_lockout_failures,
                                                     settings.login_lockout_window_s, settings.login_lockout_s))
        self.training = TrainingQueue(client, self.keys, self.runs)
        self.heartbeats = Heartbeats(client, self.keys, settings.heartbeat_interval_s, settings.heartbeat_stale_s)
        self.knowledge = Knowledge(client, self.keys)
        self.erasure = Erasure(client, self.keys, self.runs)
        self.retention = Retention(client, self.keys, self.erasure, self.runs, settings.retention_days)

    @classmethod
    def from_settings(cls, settings, announce: bool = True) -> "FeedbackStore":
        """Connect to the configured (or embedded) Redis and build the store."""
        return cls(connect(settings, announce=announce), settings)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def memory(self) -> tuple[int, int]:
        """(bytes Redis uses, its ``maxmemory``; 0: no limit)."""
        info = self.redis.info("memory")
        return int(info["used_memory"]), int(info.get("maxmemory", 0))
