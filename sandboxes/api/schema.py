"""OpenAPI: the Bearer scheme, and the error responses every operation can give.

Loaded by ``sandboxes.api.urls`` so the extension is registered before the schema is
generated (by ``/api/schema/`` or ``manage.py spectacular``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension

ERROR_REF = {"$ref": "#/components/schemas/Error"}
#: Status -> description, documented on every operation of the API.
COMMON_ERRORS = {
    "400": "Invalid request (code invalid; fields names what is wrong).",
    "401": "No, or an invalid, expired or revoked token.",
    "403": "Not allowed: read-only token, viewer role, or a team quota (code quota_<name>).",
    "404": "No such object in your team.",
    "429": "Too many requests for your team; see the Retry-After header.",
}
#: Documented on every operation that takes a body.
BODY_ERRORS = {
    "413": "The body is larger than the server accepts (code request_too_large).",
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
                "capability": {"type": "string"},
                "reason": {"type": "string"},
                "quota": {"type": "string"},
                "limit": {"type": "integer"},
                "used": {"type": "integer"},
                "requested": {"type": "integer"},
                "retry_after": {"type": "integer"},
            },
            "required": ["code", "message", "fields"],
        }
    },
    "required": ["error"],
}


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "sandboxes.api.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (sbt_...) from POST /api/v1/tokens or the dashboard.",
        }


class TeamSessionScheme(OpenApiAuthenticationExtension):
    target_class = "sandboxes.api.auth.TeamSessionAuthentication"
    name = "cookieAuth"

    def get_security_definition(self, auto_schema) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.SESSION_COOKIE_NAME,
            "description": "The dashboard's session (team: the one chosen there); "
            "writes need the X-CSRFToken header.",
        }


#: Headers the common error responses carry.
ERROR_HEADERS = {
    "401": {
        "WWW-Authenticate": {
            "schema": {"type": "string"},
            "description": 'Bearer realm="api"',
        }
    },
    "429": {
        "Retry-After": {
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds until the team's current window ends.",
        }
    },
}


def add_error_responses(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: the one error shape, and the errors any operation can give.

    Request bodies are closed (``additionalProperties: false``): the API refuses a field
    it does not know, so the schema says so.
    """
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/") or path.startswith("/api/schema"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            errors = dict(COMMON_ERRORS)
            if "requestBody" in operation:
                errors.update(BODY_ERRORS)
            for code, description in sorted(errors.items()):
                content = {"application/json": {"schema": ERROR_REF}}
                response = responses.setdefault(
                    code, {"description": description, "content": content}
                )
                if code in ERROR_HEADERS:
                    response.setdefault("headers", {}).update(ERROR_HEADERS[code])
            for response in responses.values():
                content = response.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref") == "#/components/schemas/Error":
                    content["schema"] = ERROR_REF
    for name, schema in schemas.items():
        if name.endswith("Request") and schema.get("type") == "object":
            schema["additionalProperties"] = False
    return result
