"""Reading requests at the edge (strict UTF-8, JSON, pydantic bodies and the bearer token), and answering
with a pydantic model."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import Response, request
from pydantic import BaseModel, ValidationError

from bot.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], optional: bool = False) -> M:
    """The request body as ``model``; an empty body is ``model()`` when ``optional``.

    Raises:
        ApiError: 400 for bad UTF-8 or JSON, 415 for a non-JSON type, 422 for wrong fields.
        RequestEntityTooLarge: the body exceeds MAX_CONTENT_LENGTH (checked before reading).
    """
    raw = request.get_data(cache=False)
    if not raw and optional:
        return model()
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_encoding", f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                       f"column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ApiError(422, "invalid_request", problems) from None


def bearer_token() -> str:
    """The customer token from ``Authorization: Bearer <token>``, or a 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing_token",
                       "send the conversation token as 'Authorization: Bearer <token>'")
    return token.strip()


def model_response(model: BaseModel, status: int = 200) -> Response:
    """``model`` as a JSON response."""
    return Response(model.model_dump_json(), status=status, mimetype="application/json")
