"""Bad input on every route of /openapi.json is a 4xx with a JSON error that says what is wrong, never a
500: ids of the wrong shape or unknown, numbers past their range, query values of the wrong type or
length, and bodies that are malformed, not UTF-8, of another content type, not an object, wrongly typed,
over-long, too deeply nested or too large. The operations are read from the document, so a route is
covered as soon as it is documented; a documented body needs a valid example in ``VALID_BODIES`` (each
bad body is that example with one thing wrong, so the refusal is about that thing). Real Redis; the
app is built without starting the model (no request here gets as far as generating a reply).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest

from feedback_store import FeedbackStore
from loopdesk.config import load_settings
from tests.console_helpers import (
    PASSWORD,
    add_accounts,
    register_record,
    seed_conversation,
    sign_in,
)
from tests.web_helpers import GENEROUS_LIMIT, started_app

METHODS = ("get", "post", "put", "patch", "delete")
LONG = 30_000  # characters: longer than any field allows, shorter than the 64 KiB body limit

VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/admin/users"): {"name": "newcomer", "role": "expert", "password": "long enough secret"},
    ("put", "/api/admin/users/{name}/disabled"): {"disabled": True},
    ("put", "/api/admin/users/{name}/password"): {"password": "another long secret"},
    ("put", "/api/admin/users/{name}/role"): {"role": "expert"},
    ("post", "/api/conversations"): {"meta": {"page": "https://shop.example/faq"}},
    ("post", "/api/conversations/{conv_id}/messages"): {"text": "Where is my order?"},
    ("post", "/api/conversations/{conv_id}/rating"): {"score": 4, "comment": "quick and right"},
    ("post", "/api/conversations/{conv_id}/contact"): {"email": "sam@example.com"},
    ("post", "/api/inbox/conversations/{conv_id}/messages"): {"text": "Your parcel left our depot today."},
    ("put", "/api/inbox/presence"): {"status": "online"},
    ("post", "/api/expert/conversations/{conv_id}/turns/{index}/annotations"): {
        "score": 1, "tags": ["great"], "corrected_reply": "It ships tomorrow by courier.", "note": "fine"},
    ("post", "/api/expert/login"): {"name": "erin", "password": PASSWORD},
    ("post", "/api/kb/articles"): {"id": "gift-cards", "title": "Gift cards", "body": "They never expire.",
                                   "tags": ["billing"]},
    ("put", "/api/kb/articles/{article_id}"): {"base_version": 1, "title": "Refunds", "body": "Within 30 days.",
                                               "tags": ["refunds"], "status": "published"},
    ("post", "/api/kb/articles/{article_id}/retire"): {"base_version": 1},
    ("post", "/api/kb/articles/{article_id}/revert"): {"to_version": 1, "base_version": 1},
    ("post", "/api/kb/preview"): {"body": "# Refunds\n\nWithin 30 days."},
    ("post", "/api/operator/adapters/{version}/canary"): {"reason": "held-out reward is higher"},
    ("post", "/api/operator/adapters/{version}/promote"): {"reason": "canary CSAT is higher"},
    ("post", "/api/operator/rollback"): {"reason": "CSAT fell", "to_version": "base"},
    ("put", "/api/operator/canary-share"): {"share": 0.1},
    ("post", "/api/operator/schedules"): {"cron": "0 3 * * *", "enabled": True},
    ("patch", "/api/operator/schedules/{schedule_id}"): {"enabled": False},
}

BAD_ID_SHAPES = ("bad:id", "x" * 200, "two words", "semi;colon", "é", "%FF", "nul\x00", "a/../b")
BAD_NUMBERS = ("99999999999999999999", "-1", "1.5", "one", "9" * 5000)


@dataclass
class Site:
    """The app, a signed-in admin, a customer's open conversation and one of everything to name."""

    app: Any
    admin: Any
    customer: Any
    csrf: str
    token: str
    valid: dict[str, str]
    unknown: dict[str, str]
    spec: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def site(data_dir: Path) -> Iterator[Site]:
    settings = load_settings({}, data_dir=data_dir, key_prefix=f"b{uuid.uuid4().hex[:12]}",
                             rate_limit_per_ip=GENEROUS_LIMIT, rate_limit_per_conversation=GENEROUS_LIMIT,
                             rate_limit_login=GENEROUS_LIMIT)
    store = FeedbackStore.from_settings(settings, announce=False)
    add_accounts(store)
    conv, token = store.conversations.start("base")  # the customer's: not answered yet, so never rated
    store.conversations.append_customer(conv.id, token, "Where is my order?")
    answered = seed_conversation(store, ended=False)  # the experts': a bot turn at index 1
    store.knowledge.create("refunds", "Refunds", "Within 30 days of delivery.", ["refunds"], by="ada")
    adapter = register_record(store)
    run = store.runs.create({}, trigger="manual")
    schedule = store.schedules.add("0 3 * * *")
    with started_app(settings, store) as app:
        admin = app.test_client()
        csrf = sign_in(admin, "ada")
        valid = {"conv_id": conv.id, "answered": answered.id, "index": "1", "article_id": "refunds",
                 "version": adapter.version, "kb_version": "1", "run_id": run.id, "schedule_id": schedule.id,
                 "name": "erin"}
        unknown = {"conv_id": "nosuchconversation", "answered": "nosuchconversation", "index": "999",
                   "article_id": "no-such-article", "version": "v9999", "kb_version": "999", "run_id": "nosuchrun",
                   "schedule_id": "nosuchschedule", "name": "nobody"}
        built = Site(app=app, admin=admin, customer=app.test_client(), csrf=csrf, token=token, valid=valid,
                     unknown=unknown)
        built.spec = admin.get("/openapi.json").get_json()
        yield built


# ---- the document's operations and what they take --------------------------------------------------

@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def path_params(self) -> list[str]:
        return [p["name"] for p in self.spec.get("parameters", []) if p["in"] == "path"]

    @property
    def query_params(self) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == "query"]

    @property
    def has_body(self) -> bool:
        return "requestBody" in self.spec

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


def operations(spec: dict[str, Any]) -> list[Operation]:
    return [Operation(method, path, op) for path, item in spec["paths"].items()
            for method, op in item.items() if method in METHODS]


def body_schema(site: Site, op: Operation) -> dict[str, Any]:
    ref = op.spec["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return site.spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


def is_number(op: Operation, name: str) -> bool:
    """Whether a path part is a number: a turn index, or an article's version (an adapter's is a name)."""
    return name == "index" or (name == "version" and op.path.startswith("/api/kb/"))


def path_value(op: Operation, name: str, values: dict[str, str]) -> str:
    if name == "version" and is_number(op, name):
        return values["kb_version"]
    if name == "conv_id" and op.path.startswith("/api/expert/"):
        return values["answered"]
    return values[name]


# ---- requests ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    """One request with one thing wrong, and the statuses that refuse it properly."""

    op: Operation
    what: str
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    content_type: str = "application/json"
    statuses: tuple[int, ...] = tuple(range(400, 500))
    names: str = ""  # a field the message must name


def send(site: Site, bad: Bad):
    op = bad.op
    filled = {n: bad.path.get(n) or path_value(op, n, site.valid) for n in op.path_params}
    url = op.path
    for name, value in filled.items():
        url = url.replace("{" + name + "}", quote(value, safe="%") if value == "%FF" else quote(value, safe=""))
    data = bad.data
    if data is None and op.has_body:
        data = json.dumps(VALID_BODIES[(op.method, op.path)]).encode()
    headers = {}
    if op.path.startswith("/api/conversations"):
        client, headers["Authorization"] = site.customer, f"Bearer {site.token}"
    else:
        client, headers["X-CSRF-Token"] = site.admin, site.csrf
    return client.open(url, method=op.method.upper(), query_string=bad.query, data=data, headers=headers,
                       content_type=bad.content_type if data is not None else None)


def with_field(op: Operation, name: str, value: Any) -> bytes:
    return json.dumps({**VALID_BODIES[(op.method, op.path)], name: value}).encode()


# ---- the kinds of bad input ---------------------------------------------------------------------

def bad_path_ids(site: Site, op: Operation) -> list[Bad]:
    return [Bad(op, f"{name}={value[:20]!r}", path={name: value})
            for name in op.path_params for value in (BAD_NUMBERS if is_number(op, name) else BAD_ID_SHAPES)]


def unknown_path_ids(site: Site, op: Operation) -> list[Bad]:
    return [Bad(op, f"unknown {name}", path={name: path_value(op, name, site.unknown)}, statuses=(403, 404, 422))
            for name in op.path_params]


def bad_query_values(site: Site, op: Operation) -> list[Bad]:
    cases = []
    for param in op.query_params:
        schema, name = param["schema"], param["name"]
        kind = schema["type"]
        if kind in ("integer", "number"):
            values = ["one", "9" * 5000, "1e400", "nan"] + (["1.5"] if kind == "integer" else [])
            values += [str(schema["minimum"] - 1)] if "minimum" in schema else []
            values += [str(schema["maximum"] + 1)] if "maximum" in schema else []
        elif kind == "boolean":
            values = ["maybe", "x" * LONG]
        else:
            values = ["x" * (schema.get("maxLength", LONG) + 1)] + (["bogus"] if "enum" in schema else [])
        cases += [Bad(op, f"?{name}={v[:20]!r}", query={name: v}, statuses=(422,), names=name) for v in values]
    return cases


def malformed_json(site: Site, op: Operation) -> list[Bad]:
    return [Bad(op, "truncated JSON", data=b'{"text": "where', statuses=(400,)),
            Bad(op, "JSON with a trailing comma", data=b'{"a": 1,}', statuses=(400,))] if op.has_body else []


def not_utf8(site: Site, op: Operation) -> list[Bad]:
    latin1 = '{"text": "café"}'.encode("latin-1")
    return [Bad(op, "Latin-1 bytes", data=latin1, statuses=(400,))] if op.has_body else []


def wrong_content_type(site: Site, op: Operation) -> list[Bad]:
    if not op.has_body:
        return []
    valid = json.dumps(VALID_BODIES[(op.method, op.path)]).encode()
    return [Bad(op, "text/plain", data=valid, content_type="text/plain", statuses=(415,)),
            Bad(op, "a form", data=b"a=1", content_type="application/x-www-form-urlencoded", statuses=(415,))]


def not_an_object(site: Site, op: Operation) -> list[Bad]:
    return [Bad(op, f"body {raw!r}", data=raw, statuses=(422,)) for raw in (b"[]", b'"text"', b"null", b"7")
            ] if op.has_body else []


def unknown_field(site: Site, op: Operation) -> list[Bad]:
    return [Bad(op, "unknown field", data=with_field(op, "surprise", 1), statuses=(422,), names="surprise")
            ] if op.has_body else []


def too_deep(site: Site, op: Operation) -> list[Bad]:
    nested = b'{"surprise": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    return [Bad(op, "30,000 levels deep", data=nested, statuses=(400,))] if op.has_body else []


def too_large(site: Site, op: Operation) -> list[Bad]:
    huge = b'{"text": "' + b"a" * 70_000 + b'"}'
    return [Bad(op, "70 kB", data=huge, statuses=(413,))] if op.has_body else []


WRONG_TYPES: dict[str, list[Any]] = {
    "string": [12345, True, None, ["a"]], "integer": ["5", 1.5, True, None], "number": ["0.5", True, None],
    "boolean": ["true", 1, None], "array": ["great", {"a": 1}, [12345]], "object": [["a"], "a", {"page": 5}],
}


def schema_types(schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema:
        return set().union(*(schema_types(s) for s in schema["anyOf"]))
    if "$ref" in schema or "enum" in schema or "const" in schema:
        return {"string"}
    return {schema["type"]}


def wrong_types(site: Site, op: Operation) -> list[Bad]:
    if not op.has_body:
        return []
    cases = []
    for name, schema in body_schema(site, op)["properties"].items():
        types = schema_types(schema)
        for kind in sorted(types - {"null"}):
            wrong = [v for v in WRONG_TYPES[kind] if not (v is None and "null" in types)]
            cases += [Bad(op, f"{name}={v!r}", data=with_field(op, name, v), statuses=(422,), names=name)
                      for v in wrong]
    return cases


def over_long(site: Site, op: Operation) -> list[Bad]:
    if not op.has_body:
        return []
    long, cases = "x" * LONG, []
    for name, schema in body_schema(site, op)["properties"].items():
        types = schema_types(schema)
        values = ([long] if "string" in types else []) + ([[long]] if "array" in types else [])
        values += [{"page": long}, {long: "v"}, {str(i): "v" for i in range(1000)}] if "object" in types else []
        cases += [Bad(op, f"{name} over-long", data=with_field(op, name, v)) for v in values]
    return cases


KINDS: list[Callable[[Site, Operation], list[Bad]]] = [
    bad_path_ids, unknown_path_ids, bad_query_values, malformed_json, not_utf8, wrong_content_type,
    not_an_object, unknown_field, too_deep, too_large, wrong_types, over_long,
]


def refusal_problem(bad: Bad, response) -> str | None:
    """What is wrong with the answer to ``bad`` (None: a proper refusal)."""
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if response.status_code not in bad.statuses:
        return f"answered {response.status_code}, wanted {bad.statuses[0]}…{bad.statuses[-1]}"
    if not response.mimetype == "application/json" or not isinstance(message, str) or not message.strip():
        return f"no JSON error message: {response.mimetype} {response.get_data(as_text=True)[:120]!r}"
    if not isinstance(error.get("code"), str) or set(body) != {"error"}:
        return f"not the error shape: {body!r:.120}"
    if len(message) > 600:
        return f"a {len(message)}-character message (the input echoed?)"
    if bad.names and bad.names not in message:
        return f"the message does not name {bad.names!r}: {message[:200]!r}"
    return None


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_every_documented_route_refuses_bad_input_with_a_clear_4xx(site, kind):
    failures, sent = [], 0
    for op in operations(site.spec):
        for bad in kind(site, op):
            response = send(site, bad)
            sent += 1
            problem = refusal_problem(bad, response)
            if problem:
                failures.append(f"{op} [{bad.what}]: {problem}")
    assert sent, f"{kind.__name__} sent nothing"
    assert not failures, f"{len(failures)} of {sent} refused badly:\n" + "\n".join(failures[:40])


def test_the_document_lists_every_route_with_what_the_bad_input_tests_need(site):
    """So the test above cannot pass by testing nothing: every API route is in the document, every body has
    a valid example whose fields the schema names, and every string query parameter is bounded."""
    ops = operations(site.spec)
    documented = {(op.method, op.path) for op in ops}
    routed = {(method.lower(), re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
              for rule in site.app.url_map.iter_rules() if rule.rule.startswith("/api/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routed <= documented, f"API routes missing from /openapi.json: {sorted(routed - documented)}"
    with_body = {(op.method, op.path) for op in ops if op.has_body}
    assert with_body == set(VALID_BODIES), (with_body ^ set(VALID_BODIES))
    for op in ops:
        if op.has_body:
            fields = set(VALID_BODIES[(op.method, op.path)])
            assert fields <= set(body_schema(site, op)["properties"]), f"{op}: {fields}"
        for param in op.query_params:
            schema = param["schema"]
            assert schema["type"] != "string" or "maxLength" in schema or "enum" in schema, f"{op} ?{param['name']}"
    assert len(ops) >= 40 and sum(bool(op.path_params) for op in ops) >= 20


def test_a_valid_example_body_is_accepted_so_the_bad_ones_fail_for_their_fault(site):
    """The examples themselves pass: harmless ones are sent as they are (the customer's rating is refused
    only because the bot never answered that conversation)."""
    by_route = {(op.method, op.path): op for op in operations(site.spec)}
    for route in [("post", "/api/kb/preview"), ("put", "/api/operator/canary-share"),
                  ("post", "/api/operator/schedules"), ("patch", "/api/operator/schedules/{schedule_id}")]:
        response = send(site, Bad(by_route[route], "valid"))
        assert response.status_code < 300, (route, response.get_data(as_text=True))
    rating = send(site, Bad(by_route[("post", "/api/conversations/{conv_id}/rating")], "valid"))
    assert (rating.status_code, rating.get_json()["error"]["code"]) == (409, "not_answered")
    login = site.app.test_client().post("/api/expert/login", json=VALID_BODIES[("post", "/api/expert/login")])
    assert login.status_code == 200 and login.get_json()["role"] == "expert"


def test_an_oversized_sign_in_form_gets_the_sign_in_page_with_a_message(site):
    """The HTML form is no API: its refusal is the page again, saying why, with where to go on kept."""
    page = site.app.test_client().post("/login?next=/expert", data={"name": "x" * 70_000, "password": "p"})
    html = page.get_data(as_text=True)
    assert (page.status_code, page.mimetype) == (413, "text/html")
    assert "The form was too large to read" in html and 'name="next" value="/expert"' in html


def test_a_number_in_a_path_is_its_value_whatever_zeros_lead_it(site):
    """'0000000000001' names turn 1 (it once was a 404 saying numbers run from 0 to 2^31-1); past 2^31-1,
    however written, is still a 404."""
    turns = f"/api/expert/conversations/{site.valid['answered']}/turns"
    body, csrf = VALID_BODIES[("post", "/api/expert/conversations/{conv_id}/turns/{index}/annotations")], site.csrf
    annotated = site.admin.post(f"{turns}/{'0' * 12}1/annotations", json=body, headers={"X-CSRF-Token": csrf})
    assert annotated.status_code == 201 and annotated.get_json()["turn_index"] == 1, annotated.get_data(as_text=True)
    too_big = site.admin.post(f"{turns}/{'0' * 12}2147483648/annotations", json=body, headers={"X-CSRF-Token": csrf})
    assert too_big.status_code == 404 and "2147483647" in too_big.get_json()["error"]["message"]
