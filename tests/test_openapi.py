"""/openapi.json documents exactly the routes the app serves, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
from flask import Flask
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from feedback_store import FeedbackStore
from tests.web_helpers import running_engine, started_app, web_settings

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def app(data_dir: Path, base_model_dir: Path) -> Flask:
    settings = web_settings(data_dir, base_model_dir)
    store = FeedbackStore.from_settings(settings, announce=False)
    with running_engine(settings, store) as engine:
        with started_app(settings, store, engine) as app:
            yield app


@pytest.fixture(scope="module")
def document(app: Flask) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.json


def test_every_api_route_is_documented_and_every_documented_route_exists(app, document):
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/") or rule.rule == "/openapi.json"
        for method in rule.methods - IGNORED_METHODS
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented


def test_document_is_valid_openapi(document):
    validate(document)


def schema_validator(document: dict, name: str) -> OAS31Validator:
    return OAS31Validator({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def test_live_answers_match_their_documented_schemas(app, document):
    client = app.test_client()
    created = client.post("/api/conversations")
    schema_validator(document, "ConversationCreated").validate(created.json)
    auth = {"Authorization": f"Bearer {created.json['token']}"}
    reply = client.post(f"/api/conversations/{created.json['conversation_id']}/messages", json={"text": "hi"},
                        headers=auth)
    schema_validator(document, "Reply").validate(reply.json)
    transcript = client.get(f"/api/conversations/{created.json['conversation_id']}", headers=auth)
    schema_validator(document, "Transcript").validate(transcript.json)
    refused = client.post(f"/api/conversations/{created.json['conversation_id']}/rating", json={"score": 9},
                          headers=auth)
    schema_validator(document, "ErrorOut").validate(refused.json)


def operations(document: dict) -> Iterator[tuple[str, str, dict]]:
    return ((path, method, op) for path, item in document["paths"].items() for method, op in item.items())


def body_fields(document: dict, op: dict) -> set[str]:
    """The fields of the operation's JSON body (none without one)."""
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    return set(document["components"]["schemas"][body["$ref"].rpartition("/")[2]]["properties"]) if body else set()


def test_links_name_documented_operations_with_what_they_take(document):
    """Every link's operationRef is a documented operation; it fills the target's path and query parameters
    (or the customer token of a call that needs one) and fields of its body; a ``$request`` value is a
    parameter or body field the source takes."""
    followed = 0
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            for name, link in response.get("links", {}).items():
                where = f"{method.upper()} {path} {status} {name}"
                pointer = link["operationRef"].removeprefix("#/paths/")
                target_path, _, target_method = pointer.replace("~1", "/").replace("~0", "~").rpartition("/")
                target = document["paths"][target_path][target_method]
                declared = {(p["in"], p["name"]) for p in target.get("parameters", [])}
                for key, expression in link["parameters"].items():
                    place, _, param = key.partition(".")
                    if (place, param) == ("header", "Authorization"):
                        assert target["security"] == [{"customerToken": []}], where
                        assert expression.startswith("Bearer {$response.body#/"), where
                    else:
                        assert (place, param) in declared, where
                    asked = re.fullmatch(r"\$request\.(path|header)\.([\w-]+)", expression)
                    assert asked is None or (asked[1], asked[2]) in {(p["in"], p["name"]) for p in op["parameters"]}
                    assert asked or "$response.body#/" in expression, where
                body = link.get("requestBody", {})
                assert set(body) <= body_fields(document, target), where
                for value in body.values():
                    asked = re.fullmatch(r"\$request\.body#/(\w+)", str(value))
                    assert asked is None or asked[1] in body_fields(document, op), where
                followed += 1
    assert followed >= 50
