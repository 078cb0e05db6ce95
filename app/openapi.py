"""The OpenAPI document says what the API answers: errors are problem+json, not FastAPI's default.

FastAPI documents a 422 of every operation as ``application/json`` ``{"detail": [...]}``
(``HTTPValidationError``) and no other error at all; Stockade answers every error, 422 included, as
RFC 9457 ``application/problem+json`` with a stable ``code`` (app/problems.py). A client generated from
the document, or a conformance check (schemathesis: "undocumented status code / content type" on every
operation), was told the wrong shape. Here each operation documents its 4XX and 5XX answers as a
``Problem``, and FastAPI's validation-error schemas go.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from supervisor.errors import ERRORS

__all__ = ["PROBLEM_SCHEMA", "install_openapi"]

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details. `code` is the stable error code; `retryable` says whether the same "
                   "request may succeed later.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "retryable"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted(ERRORS)},
        "retryable": {"type": "boolean"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "description": "Every problem found, where there are several (objects or lines)"},
    },
    "additionalProperties": True,  # structured members of some codes (tier, retry_after, rule_id, ...)
}

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_ERRORS = {
    "4XX": {"description": "The request was refused (problem+json, with its stable `code`)", "content": _PROBLEM},
    "5XX": {"description": "The server or a store it needs failed (problem+json)", "content": _PROBLEM},
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas["Problem"] = PROBLEM_SCHEMA
            for item in doc.get("paths", {}).values():
                for operation in item.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    responses.update(_ERRORS)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
