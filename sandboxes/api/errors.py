"""One error shape for every failure: ``{"error": {"code", "message", "fields"}}``.

``code`` is stable and machine-readable, ``message`` is for a person, ``fields`` maps a
request field to what is wrong with it (empty when no field is to blame). Some codes add
keys beside those three (documented in docs/api.md): ``capability`` and ``reason`` for
``capability_missing``; ``quota``, ``limit``, ``used`` and ``requested`` for
``quota_*``; ``retry_after`` for ``throttled``; ``retry_after``, ``scope`` and ``limit``
for ``too_many_long_calls``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import (
    ObjectDoesNotExist,
    RequestDataTooBig,
    SuspiciousOperation,
)
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response

from sandboxes.services import errors as service_errors

logger = logging.getLogger(__name__)

#: DRF exception class -> our code (the rest are named after their DRF default code).
DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "malformed_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}

#: Provider failure codes that mean "try again later" get 503; a wrong state 409; else 502.
PROVIDER_CONFLICT_CODES = {"provider_invalid_state", "provider_unsupported"}


class AuthenticationThrottled(exceptions.Throttled):
    """Too many failed token authentications from the caller's address (429 ``throttled``)."""

    error_message = "too many failed authentications from your address; try again in {wait} s"


def error_body(
    code: str, message: str, fields: dict[str, list[str]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}, **extra}}


class ApiError(exceptions.APIException):
    """An API-level refusal with its own code (read-only token, unknown team, ...)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        fields: dict[str, list[str]] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.fields = fields or {}
        self.extra = extra


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation errors as ``{"field.sub": ["message", ...]}``."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = "non_field_errors" if key == "non_field_errors" and not prefix else str(key)
            out.update(_flatten(value, f"{prefix}.{name}" if prefix else name))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def _service_response(exc: service_errors.ServiceError) -> Response:
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, service_errors.InvalidInput):
        code = status.HTTP_400_BAD_REQUEST
    elif isinstance(exc, service_errors.NotAllowed):
        code = status.HTTP_403_FORBIDDEN
    elif isinstance(exc, service_errors.QuotaExceeded):
        code = status.HTTP_403_FORBIDDEN
        extra = {"quota": exc.quota, "limit": exc.limit, "used": exc.used}
        extra["requested"] = exc.requested
    elif isinstance(exc, service_errors.CapabilityMissing):
        code = status.HTTP_409_CONFLICT
        extra = {"capability": exc.capability, "reason": exc.reason}
    elif isinstance(exc, (service_errors.IllegalTransition, service_errors.Conflict)):
        code = status.HTTP_409_CONFLICT
    elif isinstance(exc, service_errors.TooManyLongCalls):
        code = status.HTTP_429_TOO_MANY_REQUESTS
        headers["Retry-After"] = str(exc.retry_after)
        extra = {"retry_after": exc.retry_after, "scope": exc.scope, "limit": exc.limit}
    elif isinstance(exc, service_errors.ProviderFailure):
        if exc.code in PROVIDER_CONFLICT_CODES:
            code = status.HTTP_409_CONFLICT
        elif exc.retryable:
            code = status.HTTP_503_SERVICE_UNAVAILABLE
            headers["Retry-After"] = "5"
        else:
            code = status.HTTP_502_BAD_GATEWAY
    else:  # a ServiceError subclass added later: a refusal, not a crash
        code = status.HTTP_400_BAD_REQUEST
    return Response(
        error_body(exc.code, exc.message, exc.fields, **extra), status=code, headers=headers
    )


def _api_exception_response(exc: exceptions.APIException, context: dict) -> Response:
    # Imported here: rest_framework.views loads the permission classes of the settings,
    # which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)  # keeps WWW-Authenticate, Retry-After
    assert response is not None
    extra: dict[str, Any] = {}
    fields: dict[str, list[str]] = {}
    if isinstance(exc, ApiError):
        code, message, fields, extra = exc.error_code, str(exc.detail), exc.fields, exc.extra
    elif isinstance(exc, exceptions.ValidationError):
        code, fields = "invalid", _flatten(exc.detail)
        message = "the request is invalid: " + "; ".join(
            f"{name}: {' '.join(problems)}" for name, problems in fields.items()
        )
    else:
        code = DRF_CODES.get(type(exc)) or next(
            (c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), exc.default_code
        )
        message = str(exc.detail)
    if isinstance(exc, exceptions.Throttled):
        wait = max(1, math.ceil(exc.wait or 1))
        response["Retry-After"] = str(wait)
        extra = {"retry_after": wait}
        template = getattr(
            exc, "error_message", "too many requests for your team; try again in {wait} s"
        )
        message = template.format(wait=wait)
    response.data = error_body(code, message, fields, **extra)
    return response


def exception_handler(exc: Exception, context: dict) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception in an API view becomes the one shape."""
    if isinstance(exc, service_errors.ServiceError):
        return _service_response(exc)
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        exc = exceptions.NotFound("not found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    elif isinstance(exc, RequestDataTooBig):  # raised when the view first reads the body
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = ApiError(413, "request_too_large", f"the body is larger than {limit} bytes")
    elif isinstance(exc, SuspiciousOperation):  # e.g. too many form fields
        exc = exceptions.ParseError("the request is malformed")
    if isinstance(exc, exceptions.APIException):
        return _api_exception_response(exc, context)
    # A bug: log it with the traceback, answer in the one shape without details.
    view = context.get("view").__class__.__name__
    logger.error("unhandled error in %s", view, exc_info=exc)
    return Response(
        error_body("server_error", "internal error; it was logged"),
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: JSON under /api/, the site's page elsewhere."""
    if is_api_path(request):
        return JsonResponse(error_body("not_found", "not found"), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON under /api/, the site's page elsewhere."""
    if is_api_path(request):
        return JsonResponse(error_body("server_error", "internal error; it was logged"), status=500)
    return defaults.server_error(request)
