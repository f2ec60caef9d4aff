from __future__ import annotations

import logging
import sys

from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger("gateway.health")


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports the failure instead of raising
        logger.warning("readyz: database unreachable: %s", exc.__class__.__name__)
        checks["database"] = "unreachable"
    try:
        cache.set("readyz", "1", 5)
        checks["cache"] = "ok" if cache.get("readyz") == "1" else "unreachable"
    except Exception as exc:
        logger.warning("readyz: cache unreachable: %s", exc.__class__.__name__)
        checks["cache"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": "not_found", "message": "Not found.", "type": "not_found_error"}}, status=404
    )


def server_error(request: HttpRequest) -> JsonResponse:
    from gateway_project.errors import DATABASE_DOWN_ERRORS, DatabaseUnavailable, error_response

    if isinstance(sys.exc_info()[1], DATABASE_DOWN_ERRORS):
        # A plain Django view (console, admin) with the database down: a 503 to retry, not a 500.
        return error_response(DatabaseUnavailable())
    return JsonResponse(
        {"error": {"code": "internal_error", "message": "Internal server error.", "type": "api_error"}}, status=500
    )
