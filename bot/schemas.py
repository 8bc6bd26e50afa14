"""Request and response bodies of the chat API; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_META_LABELS = 20
MetaName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=2048)]


class Body(BaseModel):
    """Request bodies: unknown fields are errors, so typos are reported, not ignored; types are strict, so
    ``true`` is no score, ``"5"`` no number and ``1.5`` no whole number (a whole number is a fine float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StartIn(Body):
    """Optional body of ``POST /api/conversations``."""

    meta: dict[MetaName, MetaValue] = Field(default_factory=dict, max_length=MAX_META_LABELS,
                                            description="free labels, e.g. the page URL (names up to 64 "
                                                        "characters, values up to 2048)")


class MessageIn(Body):
    """A customer message."""

    text: str = Field(min_length=1, description="what the customer typed (length-capped)")


class RatingIn(Body):
    """A CSAT rating of the conversation."""

    score: int = Field(ge=1, le=5, description="1 (very unhappy) to 5 (very happy)")
    comment: str = Field(default="", max_length=2000)


class ContactIn(Body):
    """An email address for the team's reply when nobody could take the chat."""

    email: str = Field(min_length=3, max_length=254, description="where the team replies")


class ConversationCreated(BaseModel):
    conversation_id: str
    token: str = Field(description="send as 'Authorization: Bearer <token>' on every later call")
    adapter_version: str


Status = Literal["open", "waiting_for_agent", "with_agent", "ended"]


class HandoffState(BaseModel):
    """Where the conversation's latest request for a person stands."""

    reason: Literal["customer_button", "customer_asked", "no_article", "reasks"]
    available: bool = Field(description="true: a person was available and the chat went to the team; false: "
                                        "nobody was, the chat stayed with the bot and an email address may be left")
    back: str = Field(default="", description="when the team is back, e.g. 'Monday at 08:00 (Europe/London "
                                              "time)'; empty while within business hours")
    agent_name: str = Field(default="", description="the name of the agent who took the chat")
    contact_email: str = Field(default="", description="the address the customer left for a reply")


class Reply(BaseModel):
    """The bot's reply; also the data of the SSE ``done`` event."""

    turn_index: int
    text: str
    adapter_version: str
    finished: bool = Field(description="false when the reply was cut at the length limit")
    source: Literal["model", "fallback", "handoff"] = Field(
        description="model: generated from the help articles that fit; fallback: no article fitted, so the bot "
                    "says it cannot help here and hands the chat to a person; handoff: the bot's notice that "
                    "the chat goes to a person, or that nobody is available")
    status: Status = Field(default="open", description="waiting_for_agent: a person answers from now on")
    handoff: HandoffState | None = Field(default=None, description="set when this reply handed the chat off")


class Queued(BaseModel):
    """A message to a conversation that is with a person: stored for the agent, no bot reply (HTTP 202)."""

    conversation_id: str
    turn_index: int
    status: Status


class Delta(BaseModel):
    """Data of an SSE ``delta`` event: the next piece of the reply."""

    text: str


class Ended(BaseModel):
    conversation_id: str
    status: Status
    ended_at: float | None


class RatingOut(BaseModel):
    conversation_id: str
    score: int
    comment: str
    changed: bool = Field(description="false when the same rating was already stored")


class TurnOut(BaseModel):
    index: int
    role: Literal["user", "assistant", "agent"] = Field(description="the customer, the bot, or a person")
    text: str
    created_at: float
    agent_name: str | None = Field(default=None, description="on an agent's turn: the name the customer sees")


class Transcript(BaseModel):
    conversation_id: str
    status: Status
    adapter_version: str
    created_at: float
    ended_at: float | None
    csat: int | None
    csat_comment: str
    turns: list[TurnOut]
    handoff: HandoffState | None = Field(default=None, description="the latest request for a person, if any")


class HandoffOut(BaseModel):
    """The answer to asking for a person: the conversation's status and the bot's notice."""

    conversation_id: str
    status: Status
    notice: TurnOut | None = Field(description="what the bot said about it (none when the chat was with a "
                                               "person already)")
    handoff: HandoffState


class ContactOut(BaseModel):
    conversation_id: str
    contact_email: str
    text: str = Field(description="the acknowledgement to show the customer")


class StatusEvent(BaseModel):
    """Data of a conversation stream's ``status`` event."""

    status: Status
    handoff: HandoffState | None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. 'invalid_json'")
    message: str = Field(description="what was wrong, for a person")


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer of the API (and the data of the SSE ``error`` event)."""

    error: ErrorDetail
