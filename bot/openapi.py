"""``/openapi.json``: the chat API described as OpenAPI 3.1, with schemas taken from ``bot.schemas``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from bot.schemas import (
    ConversationCreated,
    Delta,
    Ended,
    ErrorOut,
    MessageIn,
    RatingIn,
    RatingOut,
    Reply,
    StartIn,
    Transcript,
)

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
MODELS: list[type[BaseModel]] = [
    StartIn, MessageIn, RatingIn, ConversationCreated, Reply, Delta, Ended, RatingOut, Transcript, ErrorOut,
]
CONV_ID = {"name": "conv_id", "in": "path", "required": True, "schema": {"type": "string"}}
AUTH = [{"customerToken": []}]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Error"} for s in statuses}


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(model)}}}


def _operation(summary: str, ok: dict[str, dict], *errors: int, body: dict | None = None,
               auth: bool = True, path_id: bool = True) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*errors)}}
    if path_id:
        operation["parameters"] = [CONV_ID]
    if body:
        operation["requestBody"] = body
    if auth:
        operation["security"] = AUTH
    return operation


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


SSE_DESCRIPTION = (
    "With 'Accept: text/event-stream' the reply streams as server-sent events: 'delta' events "
    "(data: Delta) while generating, then one 'done' (data: Reply) or 'error' (data: ErrorOut)."
)


def build_document() -> dict[str, Any]:
    """The OpenAPI document of every route under /api and of this document itself."""
    base = "/api/conversations"
    common = (401, 403, 404, 429)
    reply_ok = {"200": {
        "description": "the bot's reply (JSON, or an SSE stream when asked for)",
        "content": {"application/json": {"schema": _ref(Reply)},
                    "text/event-stream": {"schema": {"type": "string", "description": SSE_DESCRIPTION}}},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "loopdesk chat API", "version": "1",
                 "description": "Customers chat with the bot, end the chat and rate it (CSAT 1-5)."},
        "paths": {
            base: {"post": _operation(
                "Start a conversation pinned to one adapter version",
                {"201": _json(ConversationCreated, "the conversation and its customer token")},
                400, 413, 415, 422, 429, body=_body(StartIn, required=False), auth=False, path_id=False)},
            f"{base}/{{conv_id}}": {"get": _operation(
                "The transcript, for the token holder", {"200": _json(Transcript, "the turns so far")},
                *common)},
            f"{base}/{{conv_id}}/messages": {"post": _operation(
                "Send a message and get the bot's reply", reply_ok,
                400, *common, 409, 413, 415, 422, body=_body(MessageIn))},
            f"{base}/{{conv_id}}/end": {"post": _operation(
                "End the conversation (idempotent)", {"200": _json(Ended, "the conversation's status")},
                *common)},
            f"{base}/{{conv_id}}/rating": {"post": _operation(
                "Rate the conversation; a rating may be corrected within the window",
                {"200": _json(RatingOut, "the stored rating")},
                400, *common, 409, 413, 415, 422, body=_body(RatingIn))},
            "/openapi.json": {"get": _operation(
                "This document", {"200": {"description": "OpenAPI 3.1",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                auth=False, path_id=False)},
        },
        "components": {
            "schemas": _schemas(),
            "responses": {"Error": _json(ErrorOut, "the request was refused; the message says why")},
            "securitySchemes": {"customerToken": {
                "type": "http", "scheme": "bearer",
                "description": "the token returned when the conversation started"}},
        },
    }


@bp.get("/openapi.json")
def document() -> Response:
    """Serve the document."""
    return jsonify(build_document())
