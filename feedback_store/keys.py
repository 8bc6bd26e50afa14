"""Every Redis key and pub/sub channel name loopdesk uses, built in one place.

Every id that becomes part of a key is checked first (``feedback_store.ids``): a malformed one is
refused with ``ValidationFailed`` before it can name another key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from feedback_store.errors import ValidationFailed
from feedback_store.ids import (ADAPTER_VERSION, ARTICLE, CONVERSATION, PROCESS, RATER, RUN, SCHEDULE, TAG,
                                USER, check_index)
from feedback_store.records import ProcessRole

POINTERS = ("active", "canary")
PROCESS_ROLES = get_args(ProcessRole)


@dataclass(frozen=True)
class Keys:
    """Key builders under one configurable prefix (``<prefix>:...``); each checks the ids it is given."""

    prefix: str

    def _k(self, *parts: object) -> str:
        return ":".join((self.prefix, *(str(p) for p in parts)))

    # conversations
    def conversation(self, conv_id: str) -> str:
        return self._k("conv", CONVERSATION.check(conv_id))

    def turns(self, conv_id: str) -> str:
        return self._k("conv", CONVERSATION.check(conv_id), "turns")

    def message_requests(self, conv_id: str) -> str:
        """The customer's messages by idempotency key (hash: key → JSON), expiring a while after the last one."""
        return self._k("conv", CONVERSATION.check(conv_id), "requests")

    def rating_history(self, conv_id: str) -> str:
        return self._k("conv", CONVERSATION.check(conv_id), "ratings")

    def rater_ratings(self, rater: str) -> str:
        """A rater's counted ratings within the per-client cap window (conversation id → rated at)."""
        return self._k("rater", RATER.check(rater))

    def conversations_by_time(self) -> str:
        return self._k("convs", "by_time")

    def conversations_by_adapter(self, version: str) -> str:
        return self._k("convs", "adapter", ADAPTER_VERSION.check(version))

    def conversation_events(self, conv_id: str) -> str:
        """Pub/sub channel: every turn appended to the conversation and every change of its status."""
        return self._k("conv", conv_id, "events")

    def pruned(self) -> str:
        """Conversation id → the numbers kept of a conversation with feedback after its retention period."""
        return self._k("convs", "pruned")

    def erased(self) -> str:
        """Conversation id → the record that it was erased (no text), and which runs may have used it."""
        return self._k("convs", "erased")

    # handoffs to a person and the agents' inbox
    def handoff(self, conv_id: str) -> str:
        """The conversation's latest handoff (hash)."""
        return self._k("handoff", conv_id)

    def earlier_handoffs(self, conv_id: str) -> str:
        """The conversation's handoffs before the latest one (JSON list, oldest first)."""
        return self._k("handoff", conv_id, "earlier")

    def handoffs_waiting(self) -> str:
        """Conversations waiting for an agent, by the time they asked."""
        return self._k("handoffs", "waiting")

    def handoffs_with_agents(self) -> str:
        """Conversations an agent has claimed, by the time of the claim."""
        return self._k("handoffs", "with_agent")

    def contact_requests(self) -> str:
        """Conversations whose customer left an email address for a reply, by the time they left it."""
        return self._k("handoffs", "contact")

    def agent_presence(self, name: str) -> str:
        """An agent's presence (``online`` or ``away``), expiring unless the inbox page refreshes it."""
        return self._k("agent", name, "presence")

    def agents_online(self) -> str:
        """Online agents by the time their presence expires."""
        return self._k("agents", "online")

    # annotations and the expert queue
    def annotations(self, conv_id: str, turn_index: int) -> str:
        return self._k("ann", CONVERSATION.check(conv_id), check_index(turn_index))

    def annotated_turns(self, conv_id: str) -> str:
        return self._k("conv", CONVERSATION.check(conv_id), "annotated_turns")

    def queue(self) -> str:
        return self._k("queue")

    def queue_by_adapter(self, version: str) -> str:
        return self.queue_by_adapter_prefix() + ADAPTER_VERSION.check(version)

    def queue_by_adapter_prefix(self) -> str:
        """What Lua scripts put before a conversation's adapter version to find its queue."""
        return self._k("queue", "adapter", "")

    def tagged(self, tag: str) -> str:
        return self.tagged_prefix() + TAG.check(tag)

    def tagged_prefix(self) -> str:
        """What Lua scripts put before a tag to find the conversations tagged with it."""
        return self._k("tag", "")

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
        return self._k("adapter", ADAPTER_VERSION.check(version))

    def adapters(self) -> str:
        return self._k("adapters")

    def adapter_seq(self) -> str:
        return self._k("adapters", "seq")

    def adapter_pointer(self, role: Literal["active", "canary"]) -> str:
        if role not in POINTERS:
            raise ValidationFailed(f"an adapter pointer is one of {', '.join(POINTERS)}, not {role!r}")
        return self._k("adapters", role)

    def canary_share(self) -> str:
        return self._k("adapters", "canary_share")

    def announce_channel(self) -> str:
        return self._k("announce")

    # training runs, schedules, locks
    def run(self, run_id: str) -> str:
        return self._k("run", RUN.check(run_id))

    def run_progress(self, run_id: str) -> str:
        return self._k("run", RUN.check(run_id), "progress")

    def runs(self) -> str:
        return self._k("runs")

    def run_seq(self) -> str:
        return self._k("runs", "seq")

    def training_watermark(self) -> str:
        return self._k("runs", "watermark")

    def schedule(self, schedule_id: str) -> str:
        return self._k("schedule", SCHEDULE.check(schedule_id))

    def schedules(self) -> str:
        return self._k("schedules")

    def lock(self, name: str) -> str:
        return self._k("lock", name)

    # liveness of the training workers and schedulers
    def heartbeat(self, role: str, process_id: str) -> str:
        """A worker's or scheduler's last heartbeat (hash), expiring a while after it stopped beating."""
        if role not in PROCESS_ROLES:
            raise ValidationFailed(f"a heartbeat's role is one of {', '.join(PROCESS_ROLES)}, not {role!r}")
        return self._k("heartbeat", role, PROCESS.check(process_id))

    def heartbeats(self) -> str:
        """Every heartbeat's ``<role>:<id>`` by the time of its last beat."""
        return self._k("heartbeats")

    # console accounts
    def user(self, name: str) -> str:
        return self.user_prefix() + USER.check(name)

    def user_prefix(self) -> str:
        """What a Lua script puts before an account's name to read its hash."""
        return self._k("user", "")

    def users(self) -> str:
        return self._k("users")

    def user_sessions(self, name: str) -> str:
        """The account's session generation; kept after removal so a re-created name starts above it."""
        return self._k("user", USER.check(name), "sessions")

    def login_failures(self, name: str) -> str:
        return self._k("login", "failures", USER.check(name))

    def login_lock(self, name: str) -> str:
        return self._k("login", "lock", USER.check(name))

    # the knowledge base
    def kb_article(self, article_id: str) -> str:
        """The article's current version (JSON)."""
        return self._k("kb", "article", ARTICLE.check(article_id))

    def kb_versions(self, article_id: str) -> str:
        """Every version of the article (JSON list; index = version - 1)."""
        return self._k("kb", "article", ARTICLE.check(article_id), "versions")

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
