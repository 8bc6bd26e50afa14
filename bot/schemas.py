"""Request and response bodies of the chat API; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    """Request bodies: unknown fields are errors, so typos are reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class StartIn(Body):
    """Optional body of ``POST /api/conversations``."""

    meta: dict[str, str] = Field(default_factory=dict, description="free labels, e.g. the page URL")


class MessageIn(Body):
    """A customer message."""

    text: str = Field(min_length=1, description="what the customer typed (length-capped)")


class RatingIn(Body):
    """A CSAT rating of the conversation."""

    score: int = Field(ge=1, le=5, description="1 (very unhappy) to 5 (very happy)")
    comment: str = Field(default="", max_length=2000)


class ConversationCreated(BaseModel):
    conversation_id: str
    token: str = Field(description="send as 'Authorization: Bearer <token>' on every later call")
    adapter_version: str


class Reply(BaseModel):
    """The bot's reply; also the data of the SSE ``done`` event."""

    turn_index: int
    text: str
    adapter_version: str
    finished: bool = Field(description="false when the reply was cut at the length limit")
    source: Literal["model", "fallback"] = Field(
        description="model: generated from the help articles that fit; fallback: no article fitted, so the bot "
                    "says it cannot help here and how to reach a person")


class Delta(BaseModel):
    """Data of an SSE ``delta`` event: the next piece of the reply."""

    text: str


class Ended(BaseModel):
    conversation_id: str
    status: Literal["open", "ended"]
    ended_at: float | None


class RatingOut(BaseModel):
    conversation_id: str
    score: int
    comment: str
    changed: bool = Field(description="false when the same rating was already stored")


class TurnOut(BaseModel):
    index: int
    role: Literal["user", "assistant"]
    text: str
    created_at: float


class Transcript(BaseModel):
    conversation_id: str
    status: Literal["open", "ended"]
    adapter_version: str
    created_at: float
    ended_at: float | None
    csat: int | None
    csat_comment: str
    turns: list[TurnOut]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. 'invalid_json'")
    message: str = Field(description="what was wrong, for a person")


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer of the API (and the data of the SSE ``error`` event)."""

    error: ErrorDetail
