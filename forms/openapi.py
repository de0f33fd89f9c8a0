"""The OpenAPI document, built from the same pydantic models that validate the forms."""

from __future__ import annotations

from typing import Any

from leadsync import __version__
from leadsync.forms.schemas import MESSAGES, SCHEMAS

ERRORS = {
    "type": "object",
    "properties": {"errors": {"type": "object", "additionalProperties": {"type": "string"}}},
    "required": ["errors"],
    "example": {"errors": {"email": "Enter a valid email address."}},
}


def _form_path(form: str) -> dict[str, Any]:
    schema = SCHEMAS[form].model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    name = SCHEMAS[form].__name__
    ref = {"$ref": f"#/components/schemas/{name}"}
    error = {"content": {"application/json": {"schema": ERRORS}, "text/html": {"schema": {"type": "string"}}}}
    return {
        "schema": (name, schema),
        "path": {
            "post": {
                "summary": f"Submit the {form} form",
                "operationId": f"submit_{form.replace('-', '_')}",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                        "description": "Same key, same answer, one submission.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": ref},
                        "application/x-www-form-urlencoded": {"schema": ref},
                        "multipart/form-data": {"schema": ref},
                    },
                },
                "responses": {
                    "202": {
                        "description": "Stored; processing follows in the background.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Accepted"},
                                "example": {"status": "accepted", "id": "3f2a9c", "message": MESSAGES[form]},
                            }
                        },
                    },
                    "303": {"description": "Plain HTML form post (Accept: text/html): go to the thank-you page."},
                    "400": {"description": "The body could not be read.", **error},
                    "413": {"description": "The body is too large.", **error},
                    "415": {"description": "Unsupported content type.", **error},
                    "422": {"description": "Field errors.", **error},
                    "503": {"description": "The database is unavailable; nothing was stored.", **error},
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Accepted": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["accepted"]},
                "id": {"type": "string"},
                "message": {"type": "string"},
            },
            "required": ["status", "id", "message"],
        }
    }
    for form in SCHEMAS:
        built = _form_path(form)
        paths[f"/forms/{form}"] = built["path"]
        name, schema = built["schema"]
        schemas[name] = schema
    health = {"description": "Up.", "content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/healthz"] = {"get": {"summary": "The process is up", "responses": {"200": health}}}
    paths["/readyz"] = {
        "get": {
            "summary": "The database and the broker answer",
            "responses": {"200": health, "503": {"description": "A dependency does not answer.", **health}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "leadsync forms", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
