"""What is left of a conversation once its data is gone: the numbers a pruned one keeps, and the
record that one was erased. Neither holds text, token ids, meta or the client's hashes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from feedback_store.records import ID_PATTERN, VERSION_PATTERN, HandoffReason, Record, ReplySource


class PrunedTurn(Record):
    """A bot turn's numbers: who served it, when, how it ended, which articles it saw, how experts scored it."""

    index: int = Field(ge=0)
    adapter_version: str = Field(pattern=VERSION_PATTERN)
    created_at: float
    source: ReplySource
    finished: bool
    reply_tokens: int = Field(ge=0)
    articles: list[str] = Field(default_factory=list, description="'<article id>@<version>' of each article seen")
    expert_scores: list[int] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class PrunedHandoff(Record):
    """A handoff's numbers: why and when it was asked for, whether a person was available, and when it was
    claimed, transferred back, resolved or ended (not who answered, nor the email address left)."""

    reason: HandoffReason
    requested_at: float
    available: bool
    claimed_at: float | None = None
    returned_at: float | None = None
    resolved_at: float | None = None
    ended_at: float | None = None


class PrunedConversation(Record):
    """A conversation with feedback after its retention period: its numbers, nothing the customer wrote.

    ``token_hash`` (the hash of the customer's random token, never the token) stays so that the
    customer can still erase even these numbers (``DELETE /api/conversations/<id>``).
    """

    id: str = Field(pattern=ID_PATTERN)
    token_hash: str = Field(repr=False)
    adapter_version: str = Field(pattern=VERSION_PATTERN)
    created_at: float
    ended_at: float | None = None
    pruned_at: float
    n_turns: int = Field(ge=0)
    csat: int | None = Field(default=None, ge=1, le=5)
    csat_weight: float = Field(default=1.0, ge=0, le=1)
    rated_at: float | None = None
    feedback_at: float | None = Field(default=None, description="its first rating or annotation")
    turns: list[PrunedTurn] = Field(default_factory=list, description="its bot turns")
    handoffs: list[PrunedHandoff] = Field(default_factory=list, description="its handoffs to a person, oldest first")


class ErasedConversation(Record):
    """The record that a conversation was erased: when, at whose request, and which training runs may
    have learnt from its feedback before (an adapter cannot unlearn it; these say which were trained with it)."""

    id: str = Field(pattern=ID_PATTERN)
    token_hash: str = Field(repr=False, description="so that a repeated erasure by the customer is answered alike")
    erased_at: float
    by: Literal["customer", "operator"]
    was: Literal["stored", "pruned"] = Field(description="the whole conversation, or only its pruned numbers")
    used_by_runs: list[str] = Field(default_factory=list,
                                    description="runs that started after its first feedback and did not fail")
    adapters: list[str] = Field(default_factory=list, description="the adapter versions those runs produced")
