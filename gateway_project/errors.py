"""The one error shape: {"error": {"code", "message", "type"}}.

Services raise `GatewayError` subclasses; the DRF exception handler (and the plain
Django views of the metered path, through `error_response`) turn them into JSON.
Unexpected exceptions stay 500s: logged with their traceback, never shown.
"""

from __future__ import annotations

import logging
from typing import Any

from django import db
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse, UnreadablePostError
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger("gateway.errors")


class GatewayError(Exception):
    status_code: int = 400
    code: str = "bad_request"
    error_type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after
        self.details = details or {}

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.error_type}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadRequest(GatewayError):
    status_code = 400
    code = "bad_request"
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status_code = 401
    code = "authentication_failed"
    error_type = "authentication_error"


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"
    error_type = "permission_error"


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"
    error_type = "not_found_error"


class Conflict(GatewayError):
    status_code = 409
    code = "conflict"
    error_type = "conflict_error"


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "input_too_large"
    error_type = "invalid_request_error"


class TooManyRequests(GatewayError):
    status_code = 429
    code = "rate_limited"
    error_type = "rate_limit_error"


class ServiceUnavailable(GatewayError):
    status_code = 503
    code = "service_unavailable"
    error_type = "api_error"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached (or cannot serve right now): retry shortly."""

    code = "database_unavailable"

    def __init__(self, message: str = "The database is unavailable; try again shortly.", *,
                 retry_after: int | None = 5, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)


class MeteringUnavailable(DatabaseUnavailable):
    """The metered API's view of it: a call that cannot be metered is not run (HARD), or fails open."""

    code = "metering_unavailable"

    def __init__(self, message: str = "Metering is unavailable; try again shortly.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


# What "the database is down" looks like: a refused or dropped connection, a pool that could not hand
# one out in time (psycopg_pool's PoolTimeout, a psycopg OperationalError), a server shutting down.
# Django wraps the driver's errors in its own; the driver's are listed for any raised outside Django's
# wrapper. Integrity or programming errors are bugs, not outages: they stay 500s (SQLite files some of
# those, "no such table" among them, as OperationalError: the log line names them).
DATABASE_DOWN_ERRORS: tuple[type[Exception], ...] = (db.OperationalError, db.InterfaceError)
try:
    import psycopg
except ImportError:  # the embedded default needs no PostgreSQL driver
    pass
else:
    DATABASE_DOWN_ERRORS += (psycopg.OperationalError, psycopg.InterfaceError)


def error_response(error: GatewayError) -> JsonResponse:
    response = JsonResponse(error.payload(), status=error.status_code)
    for name, value in error.headers().items():
        response[name] = value
    return response


def internal_error_payload() -> dict[str, Any]:
    return {"error": {"code": "internal_error", "message": "Internal server error.", "type": "api_error"}}


_DRF_CODES: dict[type, tuple[str, str]] = {
    drf_exceptions.NotAuthenticated: ("not_authenticated", "authentication_error"),
    drf_exceptions.AuthenticationFailed: ("authentication_failed", "authentication_error"),
    drf_exceptions.PermissionDenied: ("forbidden", "permission_error"),
    drf_exceptions.NotFound: ("not_found", "not_found_error"),
    drf_exceptions.MethodNotAllowed: ("method_not_allowed", "invalid_request_error"),
    drf_exceptions.NotAcceptable: ("not_acceptable", "invalid_request_error"),
    drf_exceptions.UnsupportedMediaType: ("unsupported_media_type", "invalid_request_error"),
    drf_exceptions.Throttled: ("throttled", "rate_limit_error"),
    drf_exceptions.ParseError: ("parse_error", "invalid_request_error"),
    drf_exceptions.ValidationError: ("validation_error", "invalid_request_error"),
}


def _drf_message(exc: drf_exceptions.APIException) -> tuple[str, dict[str, Any] | None]:
    detail = exc.detail
    if isinstance(detail, (dict, list)):
        return "Invalid input.", {"fields": detail} if isinstance(detail, dict) else {"errors": detail}
    return str(detail), None


def _client_fault(exc: Exception) -> GatewayError | None:
    """Django's own request-parsing refusals (which Django would answer with a 400), as our errors."""
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is too large.", code="request_too_large")
    if isinstance(exc, SuspiciousOperation):  # e.g. more form fields or files than DATA_UPLOAD_MAX_* allow
        logger.warning("Suspicious request refused: %s", exc.__class__.__name__)
        return BadRequest("The request could not be processed.", code="bad_request")
    if isinstance(exc, UnreadablePostError):
        return BadRequest("The request body could not be read.", code="bad_request")
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    exc = _client_fault(exc) or exc
    if isinstance(exc, GatewayError):
        return Response(exc.payload(), status=exc.status_code, headers=exc.headers())
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.APIException):
        code, error_type = next(
            (v for k, v in _DRF_CODES.items() if isinstance(exc, k)), ("error", "invalid_request_error")
        )
        # simplejwt's InvalidToken subclasses AuthenticationFailed and carries its own code.
        detail_code = getattr(exc, "default_code", None)
        if isinstance(exc, drf_exceptions.AuthenticationFailed) and detail_code == "token_not_valid":
            code = "token_not_valid"
        message, details = _drf_message(exc)
        body: dict[str, Any] = {"code": code, "message": message, "type": error_type}
        if details:
            body["details"] = details
        headers = {}
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait))
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        return Response({"error": body}, status=exc.status_code, headers=headers)
    if isinstance(exc, DATABASE_DOWN_ERRORS):
        # An outage, not a bug: one line, no traceback per request, and a 503 the client may retry.
        logger.warning("database unavailable in %s: %s: %s", _view_name(context), exc.__class__.__name__,
                       str(exc).partition("\n")[0])
        unavailable = DatabaseUnavailable()
        return Response(unavailable.payload(), status=unavailable.status_code, headers=unavailable.headers())
    logger.exception("Unhandled error in %s", _view_name(context))
    return Response(internal_error_payload(), status=500)


def _view_name(context: dict[str, Any]) -> str:
    return context.get("view").__class__.__name__ if context.get("view") else "view"
