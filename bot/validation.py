"""Reading requests at the edge: strict UTF-8, JSON of a bounded depth, strict pydantic bodies, the
bearer token, numbers and bounded strings in the query, and path parameters checked before they reach
the store."""

from __future__ import annotations

import json
import re
import unicodedata
from itertools import accumulate
from typing import TypeVar

from flask import Flask, Response, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

from bot.errors import ApiError
from feedback_store import ids
from loopdesk.excerpts import cut, quoted

M = TypeVar("M", bound=BaseModel)
N = TypeVar("N", int, float)

MAX_JSON_DEPTH = 20
"""The deepest nesting of arrays and objects a request body may have (ours need three levels)."""

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]")

PATH_IDS: dict[str, ids.IdKind] = {
    "conv_id": ids.CONVERSATION,
    "article_id": ids.ARTICLE,
    "version": ids.ADAPTER_VERSION,
    "run_id": ids.RUN,
    "schedule_id": ids.SCHEDULE,
    "name": ids.USER,
}
"""The kind of id each string path parameter of the API holds (an ``index`` path part is a number)."""


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest, found without parsing it, in linear time
    (strings are skipped, so brackets inside them do not count; a text that closes more than it opened,
    which is no JSON, counts from 0 like any other)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate((1 if c in "[{" else -1 for c in brackets), initial=0))


def parse_body(model: type[M], optional: bool = False) -> M:
    """The request body as ``model``; an empty body is ``model()`` when ``optional``.

    Raises:
        ApiError: 400 for bad UTF-8, bad JSON or nesting deeper than ``MAX_JSON_DEPTH``, 415 for a
            non-JSON type, 422 for wrong fields or types (request bodies are strict: ``"5"`` is no int).
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
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, "too_deep", f"the body nests arrays and objects {depth} levels deep; "
                                        f"the most is {MAX_JSON_DEPTH}")
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
        raise invalid_fields(exc, "body") from None


def invalid_fields(exc: ValidationError, whole: str) -> ApiError:
    """A 422 listing the first problems of ``exc`` as ``field: what is wrong`` (``whole`` names the input
    when the problem is not one field's); long names, like a 30,000-character key, are cut short."""
    def where(loc: tuple) -> str:
        return ".".join(cut(str(part)) for part in loc) or whole

    return ApiError(422, "invalid_request", "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in exc.errors()[:5]))


def bearer_token() -> str:
    """The customer token from ``Authorization: Bearer <token>``, or a 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing_token",
                       "send the conversation token as 'Authorization: Bearer <token>'")
    return token.strip()


IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""What an ``Idempotency-Key`` header may hold: a UUID, a hex string or another token of up to 128 characters."""


def idempotency_key() -> str:
    """The request's ``Idempotency-Key`` header (``""`` when absent); a malformed one is a 422."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ""
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "invalid_request", f"Idempotency-Key must be 1 to 128 letters, digits or ._:- "
                                               f"(a UUID will do), not {quoted(key, 40)}")
    return key


def model_response(model: BaseModel, status: int = 200) -> Response:
    """``model`` as a JSON response."""
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def query_number(name: str, default: N, low: N, high: N) -> N:
    """The query parameter ``name`` as a number of ``default``'s type from ``low`` to ``high`` (``default``
    when absent or empty); anything else is a 422 that names it, never a silent fallback."""
    raw = request.args.get(name, "")
    if raw == "":
        return default
    kind = type(default)
    try:
        value = kind(raw) if len(raw) <= 40 else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN is within no range
        what = "a whole number" if kind is int else "a number"
        raise ApiError(422, "invalid_request", f"{name} must be {what} from {low} to {high}, not {quoted(raw, 40)}")
    return value


def query_text(name: str, max_chars: int) -> str:
    """The query parameter ``name`` stripped (``""`` when absent); longer than ``max_chars`` is a 422."""
    text = request.args.get(name, "").strip()
    if len(text) > max_chars:
        raise ApiError(422, "invalid_request", f"{name} has {len(text):,} characters; the most is {max_chars:,}")
    return text


class IndexConverter(BaseConverter):
    """A number in a path (a turn index, an article's version): digits up to ``ids.MAX_INDEX``; a bigger
    one is a 404 that says so (werkzeug's ``int`` would hand it on, or fail on thousands of digits)."""

    regex = r"\d+"

    def to_python(self, value: str) -> int:
        # leading zeros make no number bigger: 007 is 7, and so is a zero of another script ("௦07")
        start = 0
        while start < len(value) - 1 and unicodedata.decimal(value[start]) == 0:
            start += 1
        digits = value[start:]
        if len(digits) > len(str(ids.MAX_INDEX)) or int(digits) > ids.MAX_INDEX:
            raise NotFound(f"nothing is numbered {cut(value, 20)}: numbers in paths run from 0 to {ids.MAX_INDEX}")
        return int(digits)

    def to_url(self, value: int) -> str:
        return str(int(value))


def check_path_ids(endpoint: str | None, values: dict | None) -> None:
    """Refuse an API path whose id could not name anything (a 404 saying what such an id looks like),
    before any guard, limiter key or store call sees it."""
    if not values or not request.path.startswith("/api/"):
        return
    for name, value in values.items():
        kind = PATH_IDS.get(name)
        if kind is not None and isinstance(value, str) and not kind.valid(value):
            raise ApiError(404, "not_found", kind.problem(value))


def init_app(app: Flask) -> None:
    """The ``index`` path converter and the path id check (before the blueprints' routes are added)."""
    app.url_map.converters["index"] = IndexConverter
    app.url_value_preprocessor(check_path_ids)
