"""The OpenAPI document, completed in one place: every error answer of every /v1 operation
listed, in the API's one error shape.

Route modules list the errors that are theirs (404 no such record, 409 the record's state
forbids it, a template's own 422). What every operation can answer, because of where it
sits, is added here from what the operation takes, so a new route is documented without
anyone remembering to:

- 401 for every /v1 operation (the API key is checked first), and 413 (the server refuses
  any request whose body is over its limit, whatever the operation);
- 400 (the body is not JSON) for one that takes a body;
- 422 for one that takes parameters or a body, in the error shape, replacing FastAPI's
  ``{"detail": [...]}`` (``HTTPValidationError``), which this API never answers;
- 503 for ``/readyz`` is declared on the route itself.

FastAPI's validation schemas are then dropped from the components, unless something else
refers to them.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["complete_errors", "install_openapi"]

ERROR_SCHEMA = "ErrorOut"
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")

# status → description
_GENERAL: dict[str, str] = {
    "400": "the body is not valid JSON",
    "401": "no API key, or not a valid one",
    "413": "the body is too large",
    "422": "invalid input; `error.field` names it",
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}
        },
    }


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return str(schema.get("$ref", "")).endswith("/HTTPValidationError")


def complete_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the error answers every /v1 operation can give (see the module's
    docstring); changed in place and returned."""
    for path, item in doc.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses: dict[str, Any] = op["responses"]
            body = "requestBody" in op
            needed = ["401", "413"]
            if body:
                needed.append("400")
            if body or op.get("parameters"):
                needed.append("422")
            for status in needed:
                current = responses.get(status)
                if current is None or _is_fastapi_validation(current):
                    responses[status] = _error(_GENERAL[status])
            # keep the answers in status order (generators and readers list them so)
            op["responses"] = dict(sorted(responses.items(), key=lambda kv: str(kv[0])))
    schemas = doc.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION:
        if name in schemas:
            rest = {k: v for k, v in schemas.items() if k != name}
            if f'"#/components/schemas/{name}"' not in json.dumps([doc["paths"], rest]):
                del schemas[name]
    return doc


def install_openapi(app: FastAPI) -> None:
    """``app.openapi()`` (and so /openapi.json) answers the completed document, made once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            app.openapi_schema = complete_errors(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
