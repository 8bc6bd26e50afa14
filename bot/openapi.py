"""``/openapi.json``: an OpenAPI 3.1 document assembled from the blueprints that serve the API.

Each blueprint module that serves routes under ``/api`` documents them with an
``openapi_section() -> Section`` function, built with the helpers here; request and response
schemas come from its pydantic models, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from typing import Any, NamedTuple

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel

from bot.schemas import ErrorOut

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
PATH_PARAM = re.compile(r"{(\w+)}")


class Section(NamedTuple):
    """What one blueprint adds to the document."""

    paths: dict[str, dict[str, Any]]
    models: list[type[BaseModel]]
    security_schemes: dict[str, dict[str, Any]] = {}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to ``model``'s schema (list the model in the section's ``models``)."""
    return {"$ref": REF.format(model=model.__name__)}


def json_response(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(model)}}}


def json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": ref(model)}}}


def operation(summary: str, ok: dict[str, dict], *error_statuses: int, body: dict | None = None,
              security: list[dict] | None = None) -> dict[str, Any]:
    """One operation: its success responses, the error statuses it may answer, body and security."""
    errors = {str(s): {"$ref": "#/components/responses/Error"} for s in error_statuses}
    described: dict[str, Any] = {"summary": summary, "responses": {**ok, **errors}}
    if body:
        described["requestBody"] = body
    if security:
        described["security"] = security
    return described


def query_parameter(name: str, description: str = "", **schema: Any) -> dict[str, Any]:
    """An optional query parameter whose values ``schema`` describes (type, bounds, enum, maxLength)."""
    described: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**described, "description": description} if description else described


def _with_path_parameters(path: str, item: dict[str, Any]) -> dict[str, Any]:
    names = PATH_PARAM.findall(path)
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    return {method: {**op, "parameters": params + op.get("parameters", [])} if params else op
            for method, op in item.items()}


def build_document(app: Flask) -> dict[str, Any]:
    """The document for every section the app's blueprints provide, plus this document itself."""
    paths: dict[str, Any] = {"/openapi.json": {"get": operation(
        "This document", {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}})}}
    models: list[type[BaseModel]] = [ErrorOut]
    security_schemes: dict[str, Any] = {}
    for blueprint in app.blueprints.values():
        provide = getattr(sys.modules[blueprint.import_name], "openapi_section", None)
        if provide is not None:
            section = provide()
            paths.update({p: _with_path_parameters(p, item) for p, item in section.paths.items()})
            models.extend(section.models)
            security_schemes.update(section.security_schemes)
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "loopdesk API", "version": "1",
                 "description": "Customers chat with the bot, end the chat and rate it (CSAT 1-5)."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "responses": {"Error": json_response(ErrorOut, "the request was refused; the message says why")},
            "securitySchemes": security_schemes,
        },
    }


@bp.get("/openapi.json")
def document() -> Response:
    """Serve the document."""
    return jsonify(build_document(current_app))
