"""Typed, validated records: what is stored in Redis and what the store hands back."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loopdesk.articles import ARTICLE_ID_PATTERN, VersionedArticle, checked_tags

MAX_TEXT = 8000
MAX_COMMENT = 2000
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
HASH_PATTERN = r"^([0-9a-f]{32})?$"

ConversationStatus = Literal["open", "waiting_for_agent", "with_agent", "ended"]
WITH_A_PERSON: tuple[str, ...] = ("waiting_for_agent", "with_agent")
"""The statuses in which the bot does not answer: the conversation waits for, or is with, an agent."""
ReplySource = Literal["model", "fallback", "handoff"]
HandoffReason = Literal["customer_button", "customer_asked", "no_article", "reasks"]
AdapterStatus = Literal["candidate", "canary", "active", "retired", "rejected"]
RunStatus = Literal["queued", "running", "succeeded", "rejected", "failed"]
ProcessRole = Literal["worker", "scheduler"]
BASE_VERSION = "base"


class Record(BaseModel):
    """Common settings: unknown fields are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Conversation(Record):
    """A chat, pinned at its start to one adapter version."""

    id: str = Field(pattern=ID_PATTERN)
    token_hash: str = Field(repr=False)
    adapter_version: str = Field(pattern=VERSION_PATTERN)
    status: ConversationStatus = "open"
    created_at: float
    updated_at: float
    ended_at: float | None = None
    n_turns: int = 0
    csat: int | None = Field(default=None, ge=1, le=5)
    csat_comment: str = ""
    rated_at: float | None = None
    client_hash: str = Field(default="", pattern=HASH_PATTERN, description="keyed hash of the rater's address")
    agent_hash: str = Field(default="", pattern=HASH_PATTERN, description="keyed hash of the rater's user agent")
    rater: str = Field(default="", pattern=HASH_PATTERN,
                       description="who counts as one client for caps and weights; empty: this conversation alone")
    csat_weight: float = Field(default=1.0, ge=0, le=1, description="0: stored but not counted")
    csat_weight_reason: str = ""
    handoffs: int = Field(default=0, ge=0, description="times the conversation was handed to a person (or asked "
                          "for one while nobody was available)")
    meta: dict[str, str] = Field(default_factory=dict)


class CustomerTurn(Record):
    """What the customer typed."""

    index: int = Field(ge=0)
    role: Literal["user"] = "user"
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    created_at: float


class ArticleRef(Record):
    """A help article as a reply saw it: which version, and how well it matched (BM25 score)."""

    id: str = Field(pattern=ARTICLE_ID_PATTERN)
    version: int = Field(ge=1)
    title: str = Field(max_length=200)
    score: float = Field(ge=0, allow_inf_nan=False)


class BotTurn(Record):
    """One reply with everything needed to reuse it as a PPO sample of the serving policy.

    A ``fallback`` reply (no help article fitted the question) and a ``handoff`` notice (the chat goes
    to a person, or nobody is available) were not sampled from the model: they have no context, token
    ids or log-probs and are never PPO samples.
    """

    index: int = Field(ge=0)
    role: Literal["assistant"] = "assistant"
    text: str = Field(max_length=MAX_TEXT)
    context: str = Field(description="the exact prompt text the model saw")
    prompt_token_ids: list[int]
    reply_token_ids: list[int]
    logprobs: list[float]
    adapter_version: str = Field(pattern=VERSION_PATTERN)
    latency_ms: float = Field(ge=0)
    finished: bool = Field(description="the reply ended with the end-of-sequence token")
    created_at: float
    source: ReplySource = Field(default="model", description="sampled from the model, the fixed decline, or "
                                "the fixed handoff notice")
    articles: list[ArticleRef] = Field(default_factory=list, description="the help articles in the context")
    reply_to: int | None = Field(default=None, ge=0, description="the index of the customer turn it answers "
                                 "(None: a notice nobody's message asked for, such as the handoff button's)")

    @property
    def sampled(self) -> bool:
        """Whether the model generated this reply (only then is it a sample of the policy)."""
        return self.source == "model"

    @model_validator(mode="after")
    def _aligned(self) -> "BotTurn":
        if self.source != "model" and (self.context or self.prompt_token_ids or self.reply_token_ids
                                       or self.articles):
            raise ValueError(f"a {self.source} reply was not generated: it has no context, token ids or articles")
        if len(self.logprobs) != len(self.reply_token_ids):
            raise ValueError(
                f"{len(self.logprobs)} log-probs for {len(self.reply_token_ids)} reply tokens"
            )
        if any(not math.isfinite(lp) or lp > 1e-6 for lp in self.logprobs):
            raise ValueError("log-probs must be finite and <= 0")
        return self


class AgentTurn(Record):
    """A person's reply in a handed-off conversation: who wrote it (account and the name the customer sees)."""

    index: int = Field(ge=0)
    role: Literal["agent"] = "agent"
    agent_id: str = Field(pattern=ID_PATTERN)
    agent_name: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    created_at: float


Turn = CustomerTurn | BotTurn | AgentTurn


class Handoff(Record):
    """One hand-over of a conversation to a person, from the request to its end.

    ``available`` says whether an agent was online within business hours when it was asked for:
    if not, the conversation stayed with the bot and the customer may leave ``contact_email`` for a
    reply. ``turn_index`` is the bot's notice of the handoff: the turns before it are the bot's part.
    """

    conversation_id: str = Field(pattern=ID_PATTERN)
    reason: HandoffReason
    requested_at: float
    turn_index: int = Field(ge=0)
    available: bool
    claimed_at: float | None = None
    claimed_by: str = Field(default="", max_length=64)
    agent_name: str = Field(default="", max_length=64)
    returned_at: float | None = Field(default=None, description="transferred back to the bot")
    resolved_at: float | None = None
    resolved_by: str = Field(default="", max_length=64)
    ended_at: float | None = Field(default=None, description="the conversation ended before an agent resolved it")
    contact_email: str = Field(default="", max_length=254)
    contact_at: float | None = None


class HandoffFeedback(Record):
    """The handoff that followed a bot turn, as the trainer reads it: a negative signal on the bot turns
    before it; on the one that led to it (the last before it), the agent's first reply after it is a
    demonstration of what the bot should have said."""

    reason: HandoffReason
    requested_at: float
    led_to_handoff: bool = Field(description="the last bot turn before the handoff")
    led_by: int = Field(ge=0, description="the index of the bot turn that led to it (the last bot turn before it)")
    agent_reply: str = Field(default="", description="on the turn that led to it: the agent's first reply after it")
    agent_id: str = ""


class Rating(Record):
    """A customer's CSAT for a conversation."""

    score: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=MAX_COMMENT)


class RatingSource(Record):
    """Where a rating came from, as keyed hashes (the address and user agent themselves are never stored).

    ``rater`` is the key the per-client cap and the rating weights group by: the client hash, or
    empty where each conversation counts as its own client (``Settings.rater_identity``).
    """

    client_hash: str = Field(default="", pattern=HASH_PATTERN)
    agent_hash: str = Field(default="", pattern=HASH_PATTERN)
    rater: str = Field(default="", pattern=HASH_PATTERN)


class Annotation(Record):
    """One expert's judgement of one bot turn."""

    conversation_id: str = Field(pattern=ID_PATTERN)
    turn_index: int = Field(ge=0)
    expert_id: str = Field(pattern=ID_PATTERN)
    score: int = Field(ge=-2, le=2)
    tags: list[str] = Field(default_factory=list, max_length=16)
    corrected_reply: str = Field(default="", max_length=MAX_TEXT)
    note: str = Field(default="", max_length=MAX_COMMENT)
    created_at: float = 0.0

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        return checked_tags(tags, "wrong_info")


class Article(VersionedArticle):
    """One version of a knowledge article as stored: its content and number, who made it and when."""

    updated_at: float
    updated_by: str = Field(min_length=1, max_length=64)


class AdapterVersion(Record):
    """A released LoRA adapter and where it stands."""

    version: str = Field(pattern=VERSION_PATTERN)
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    base_model: str
    parent: str = BASE_VERSION
    status: AdapterStatus = "candidate"
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_watermark: int = 0
    reason: str = ""
    created_at: float
    updated_at: float


class TrainingRun(Record):
    """One training round: its inputs, progress and outcome."""

    id: str = Field(pattern=ID_PATTERN)
    status: RunStatus = "queued"
    config: dict[str, Any] = Field(default_factory=dict)
    trigger: str = "manual"
    watermark_from: int = 0
    watermark_to: int | None = None
    adapter_version: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str = ""
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class Heartbeat(Record):
    """What a training worker or scheduler process last said about itself (``feedback_store.heartbeats``)."""

    role: ProcessRole
    id: str = Field(pattern=ID_PATTERN)
    pid: int = Field(ge=0)
    host: str = Field(max_length=255)
    started_at: float
    last_beat: float
    doing: str = Field(default="", max_length=500)
    run_id: str | None = Field(default=None, pattern=ID_PATTERN)


class Schedule(Record):
    """A cron schedule that enqueues training runs."""

    id: str = Field(pattern=ID_PATTERN)
    cron: str = Field(min_length=9, max_length=120)
    enabled: bool = True
    created_at: float

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        from croniter import croniter

        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ValueError(f"{cron!r} is not a 5-field cron expression (minute hour day month weekday)")
        return cron


class TurnWithFeedback(Record):
    """A bot turn with the feedback its conversation received (CSAT, the turn's annotations), as
    exported for the trainer."""

    conversation_id: str
    turn: BotTurn
    customer_text: str
    csat: int | None
    annotations: list[Annotation]
    conversation_started_at: float
    csat_weight: float = Field(default=1.0, description="the stored rating's weight: 0 beyond the per-client cap")
    rater: str = Field(default="", description="the rating's client key; empty: the conversation alone")
    handoff: HandoffFeedback | None = Field(default=None, description="the handoff after this turn, if any")
