"""Properties of the edge's validation (``bot/validation.py``) and of the id shapes that become parts of
Redis keys (``feedback_store/ids.py``), for any input hypothesis makes: each helper answers with a valid
value or with its one typed refusal (``ApiError`` with a status and a message, ``ValidationFailed``,
``NotFound``), never another exception; messages stay short whatever the input's length; a valid id is
one part of its key and reads back from it.
"""

from __future__ import annotations

import json
import re

import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st
from werkzeug.exceptions import NotFound

from bot.errors import ApiError
from bot.expert import AnnotationIn
from bot.knowledge_console import ArticleIn
from bot.schemas import MessageIn, RatingIn, StartIn
from bot.validation import (MAX_JSON_DEPTH, PATH_IDS, IndexConverter, bearer_token, idempotency_key, json_depth,
                            parse_body, query_number, query_text)
from feedback_store import ids
from feedback_store.errors import ValidationFailed
from feedback_store.keys import Keys

APP = Flask(__name__)
MAX_MESSAGE = 400
"""The longest refusal message any input may get (messages quote input cut short)."""

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.sampled_from(["text", "score", "comment", "meta", "tags", "id", "title", "body", "note"]),
                    JSON_VALUES, max_size=5).map(lambda value: json.dumps(value).encode()),
    st.integers(0, 3 * MAX_JSON_DEPTH).map(lambda depth: ("[" * depth + "]" * depth).encode()))
MODELS = st.sampled_from([(MessageIn, False), (RatingIn, False), (StartIn, False), (AnnotationIn, False),
                          (ArticleIn, False), (StartIn, True)])
"""Bodies the API reads, and whether it takes an empty one (only where every field has a default)."""
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])
KINDS = [ids.CONVERSATION, ids.RUN, ids.SCHEDULE, ids.USER, ids.ADAPTER_VERSION, ids.ARTICLE, ids.TAG, ids.RATER]
PROPERTY = hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refusal(exc: ApiError, *statuses: int) -> None:
    """``exc`` is a refusal with one of ``statuses``, a code and a short message a person can read."""
    assert exc.status in statuses
    assert exc.code and exc.message.strip()
    assert len(exc.message) <= MAX_MESSAGE, exc.message


def nesting(value: object) -> int:
    """How deeply the lists and dicts of a JSON value nest (the reference ``json_depth`` must agree with)."""
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


@PROPERTY
@given(value=JSON_VALUES)
def test_json_depth_is_the_nesting_of_the_value(value):
    assert json_depth(json.dumps(value)) == nesting(value)


@PROPERTY
@given(text=st.text(max_size=500))
def test_json_depth_of_any_text_is_a_count(text):
    assert json_depth(text) >= 0


@PROPERTY
@given(model_optional=MODELS, body=BODIES, content_type=CONTENT_TYPES)
def test_any_body_is_a_model_or_a_refusal(model_optional, body, content_type):
    model, optional = model_optional
    with APP.test_request_context("/", method="POST", data=body, content_type=content_type or None):
        try:
            parsed = parse_body(model, optional=optional)
        except ApiError as exc:
            refusal(exc, 400, 415, 422)
            if exc.status == 400 and exc.code == "too_deep":
                assert json_depth(body.decode()) > MAX_JSON_DEPTH
        else:
            assert isinstance(parsed, model)
            assert body or optional


@PROPERTY
@given(header=st.none() | st.text(max_size=80))
def test_any_authorization_header_is_a_token_or_a_401(header):
    headers = {} if header is None else {"Authorization": header}
    try:
        with APP.test_request_context("/", headers=headers):
            token = bearer_token()
    except ValueError:  # werkzeug refuses a header with a newline before any code of ours runs
        assert header is not None and ("\n" in header or "\r" in header)
        return
    except ApiError as exc:
        refusal(exc, 401)
        return
    assert token and token == token.strip() and header.lower().startswith("bearer ")


@PROPERTY
@given(key=st.none() | st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True))
def test_any_idempotency_key_is_kept_whole_or_refused(key):
    headers = {} if key is None else {"Idempotency-Key": key}
    try:
        with APP.test_request_context("/", headers=headers):
            kept = idempotency_key()
    except ValueError:
        assert key is not None and ("\n" in key or "\r" in key)
        return
    except ApiError as exc:
        refusal(exc, 422)
        assert "Idempotency-Key" in exc.message
        return
    assert kept == ("" if key is None else key)


@PROPERTY
@given(raw=st.text(max_size=60) | st.integers(-10**12, 10**12).map(str) | st.floats().map(str),
       whole=st.booleans())
def test_any_query_number_is_in_range_or_a_422_naming_it(raw, whole):
    default, low, high = (25, 1, 100) if whole else (14.0, 0.5, 90.0)
    with APP.test_request_context("/", query_string={"limit": raw}):
        try:
            value = query_number("limit", default, low, high)
        except ApiError as exc:
            refusal(exc, 422)
            assert "limit" in exc.message
            return
    assert type(value) is type(default) and low <= value <= high
    assert raw.strip() != "" or value == default


@PROPERTY
@given(raw=st.text(max_size=300), most=st.integers(0, 200))
def test_any_query_text_is_kept_stripped_or_a_422(raw, most):
    with APP.test_request_context("/", query_string={"q": raw}):
        try:
            text = query_text("q", most)
        except ApiError as exc:
            refusal(exc, 422)
            assert len(raw.strip()) > most
            return
    assert text == raw.strip() and len(text) <= most


@PROPERTY
@given(digits=st.from_regex(r"\d{1,40}", fullmatch=True)  # any digits the path regex takes, not only ASCII
       | st.builds(lambda zeros, number: "0" * zeros + str(number), st.integers(0, 12), st.integers(0, 10**11)))
@example(digits="\u0be6" + "0" * 10)  # a Tamil zero before ten ASCII ones: the number 0
def test_any_number_in_a_path_is_an_index_or_not_found(digits):
    try:
        index = IndexConverter(APP.url_map).to_python(digits)
    except NotFound as exc:
        assert int(digits) > ids.MAX_INDEX and len(exc.description) <= MAX_MESSAGE
        return
    assert index == int(digits) <= ids.MAX_INDEX


@PROPERTY
@given(kind=st.sampled_from(KINDS), value=st.text(max_size=100) | st.text(min_size=1000, max_size=3000) | st.none()
       | st.integers() | st.binary(max_size=10))
def test_any_value_is_an_id_or_refused_with_what_an_id_looks_like(kind, value):
    try:
        checked = kind.check(value)
    except ValidationFailed as exc:
        message = str(exc)
        assert not kind.valid(value)
        assert kind.name in message and kind.rule in message and len(message) <= MAX_MESSAGE
        return
    assert checked == value and kind.valid(value)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_id_its_pattern_makes_passes_its_check_and_has_no_separator(kind):
    """No id a kind accepts holds ':' (which would split its key) or blank space."""
    @PROPERTY
    @given(value=st.from_regex(kind.pattern, fullmatch=True))
    def check(value):
        assert kind.check(value) == value
        assert ":" not in value and not re.search(r"\s", value)

    check()


@PROPERTY
@given(conv_id=st.from_regex(ids.CONVERSATION.pattern, fullmatch=True),
       version=st.from_regex(ids.ADAPTER_VERSION.pattern, fullmatch=True), prefix=st.from_regex(r"[a-z0-9]{1,12}",
                                                                                               fullmatch=True))
def test_keys_of_valid_ids_split_back_into_the_ids(conv_id, version, prefix):
    keys = Keys(prefix)
    assert keys.turns(conv_id).split(":") == [prefix, "conv", conv_id, "turns"]
    assert keys.conversations_by_adapter(version).split(":") == [prefix, "convs", "adapter", version]


@PROPERTY
@given(value=st.integers() | st.booleans() | st.floats() | st.text(max_size=20) | st.none())
def test_any_index_is_a_whole_number_in_range_or_refused(value):
    try:
        index = ids.check_index(value)
    except ValidationFailed as exc:
        assert "0 to" in str(exc) and len(str(exc)) <= MAX_MESSAGE
        assert isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ids.MAX_INDEX
        return
    assert index == value and type(index) is int and 0 <= index <= ids.MAX_INDEX


@pytest.mark.parametrize("name", sorted(PATH_IDS))
def test_every_path_id_kind_refuses_a_colon(name):
    assert not PATH_IDS[name].valid("a:b")
