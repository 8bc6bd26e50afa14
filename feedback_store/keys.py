"""Every Redis key and pub/sub channel name loopdesk uses, built in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builders under one configurable prefix (``<prefix>:...``)."""

    prefix: str

    def _k(self, *parts: object) -> str:
        return ":".join((self.prefix, *(str(p) for p in parts)))

    # conversations
    def conversation(self, conv_id: str) -> str:
        return self._k("conv", conv_id)

    def turns(self, conv_id: str) -> str:
        return self._k("conv", conv_id, "turns")

    def rating_history(self, conv_id: str) -> str:
        return self._k("conv", conv_id, "ratings")

    def rater_ratings(self, rater: str) -> str:
        """A rater's counted ratings within the per-client cap window (conversation id → rated at)."""
        return self._k("rater", rater)

    def conversations_by_time(self) -> str:
        return self._k("convs", "by_time")

    def conversations_by_adapter(self, version: str) -> str:
        return self._k("convs", "adapter", version)

    def pruned(self) -> str:
        """Conversation id → the numbers kept of a conversation with feedback after its retention period."""
        return self._k("convs", "pruned")

    def erased(self) -> str:
        """Conversation id → the record that it was erased (no text), and which runs may have used it."""
        return self._k("convs", "erased")

    # annotations and the expert queue
    def annotations(self, conv_id: str, turn_index: int) -> str:
        return self._k("ann", conv_id, turn_index)

    def annotated_turns(self, conv_id: str) -> str:
        return self._k("conv", conv_id, "annotated_turns")

    def queue(self) -> str:
        return self._k("queue")

    def queue_by_adapter(self, version: str) -> str:
        return self._k("queue", "adapter", version)

    def tagged(self, tag: str) -> str:
        return self._k("tag", tag)

    def tagged_pattern(self) -> str:
        """A SCAN pattern that matches every tag set (and nothing else)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self._k("tag")) + ":*"

    # training data watermark
    def feedback_seq(self) -> str:
        return self._k("feedback", "seq")

    def feedback_log(self) -> str:
        return self._k("feedback", "log")

    # adapters
    def adapter(self, version: str) -> str:
        return self._k("adapter", version)

    def adapters(self) -> str:
        return self._k("adapters")

    def adapter_seq(self) -> str:
        return self._k("adapters", "seq")

    def adapter_pointer(self, role: str) -> str:
        """``role`` is ``active`` or ``canary``."""
        return self._k("adapters", role)

    def canary_share(self) -> str:
        return self._k("adapters", "canary_share")

    def announce_channel(self) -> str:
        return self._k("announce")

    # training runs, schedules, locks
    def run(self, run_id: str) -> str:
        return self._k("run", run_id)

    def run_progress(self, run_id: str) -> str:
        return self._k("run", run_id, "progress")

    def runs(self) -> str:
        return self._k("runs")

    def run_seq(self) -> str:
        return self._k("runs", "seq")

    def training_watermark(self) -> str:
        return self._k("runs", "watermark")

    def schedule(self, schedule_id: str) -> str:
        return self._k("schedule", schedule_id)

    def schedules(self) -> str:
        return self._k("schedules")

    def lock(self, name: str) -> str:
        return self._k("lock", name)

    # console accounts
    def user(self, name: str) -> str:
        return self._k("user", name)

    def users(self) -> str:
        return self._k("users")

    def user_sessions(self, name: str) -> str:
        """The account's session generation; kept after removal so a re-created name starts above it."""
        return self._k("user", name, "sessions")

    def login_failures(self, name: str) -> str:
        return self._k("login", "failures", name)

    def login_lock(self, name: str) -> str:
        return self._k("login", "lock", name)

    # the knowledge base
    def kb_article(self, article_id: str) -> str:
        """The article's current version (JSON)."""
        return self._k("kb", "article", article_id)

    def kb_versions(self, article_id: str) -> str:
        """Every version of the article (JSON list; index = version - 1)."""
        return self._k("kb", "article", article_id, "versions")

    def kb_ids(self) -> str:
        return self._k("kb", "ids")

    def kb_revision(self) -> str:
        """+1 on every change of the knowledge base; an index compares it with its own."""
        return self._k("kb", "revision")

    def kb_changes_channel(self) -> str:
        return self._k("kb", "changes")

    def rate_limits(self) -> str:
        """Prefix under which the HTTP rate limiter keeps its counters."""
        return self._k("ratelimit")

    def rq_queue_name(self) -> str:
        """Name of the RQ queue for training jobs (RQ adds its own ``rq:`` keys)."""
        return self._k("training")
