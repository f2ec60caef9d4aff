"""OpenAI-compatible metered API, one base URL per task: /v1/{TASK_CODE}/chat/completions and /models.

One implementation of each endpoint, independent of the HTTP framework: `chat_completions_endpoint`
and `models_endpoint` take the method, the headers, the raw body and the task code, and return an
`ApiResponse` (status, headers, and a JSON body or an async iterator of server-sent events). Two
thin adapters serve them: the Django views below (mounted at /v1/ in the URLconf: the test client,
WSGI and any other setup) and the pure-ASGI fast path in `llm/asgi.py`, which production's uvicorn
workers use so a metered call does not pay for Django's middleware and thread hops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from catalog.selectors import (
    ModelInfo,
    PlanEntitlements,
    plan_entitlements,
    plan_entitlements_cached,
    provider_models_active,
    provider_models_cached,
    task_get,
    tasks_cached,
)
from gateway_project.errors import (
    GatewayError,
    NotFound,
    PayloadTooLarge,
    error_response,
    internal_error_payload,
)
from llm import gateway, openai_wire
from llm.auth import authenticate_request
from llm.db import db_step

logger = logging.getLogger("gateway.llm.api")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON-serialisable, when `events` is None
    events: AsyncIterator[bytes] | None = None  # a text/event-stream body


def _error(error: GatewayError) -> ApiResponse:
    return ApiResponse(error.status_code, error.headers(), error.payload())


def request_too_large() -> ApiResponse:
    """A body over DATA_UPLOAD_MAX_MEMORY_SIZE, refused before it is read."""
    return _error(PayloadTooLarge("The request body is too large.", code="request_too_large"))


def _method_not_allowed(allowed: str) -> ApiResponse:
    error = GatewayError(f"Use {allowed} here.", code="method_not_allowed", status_code=405)
    return ApiResponse(405, {"Allow": allowed}, error.payload())


async def _guard(name: str, call: Callable[[], Awaitable[ApiResponse]]) -> ApiResponse:
    try:
        return await call()
    except GatewayError as error:
        return _error(error)
    except Exception:
        logger.exception("unhandled error in %s", name)
        return ApiResponse(500, {}, internal_error_payload())


async def _task_exists(task_code: str) -> bool:
    tasks = tasks_cached()  # almost always this process's copy: no thread hop
    if tasks is not None:
        return task_code in tasks
    return await db_step(task_get)(task_code) is not None


async def _chat(headers: Mapping[str, str], body: bytes, task_code: str) -> ApiResponse:
    context = await authenticate_request(headers)
    if not await _task_exists(task_code):
        raise NotFound(f"Unknown task '{task_code}'.", code="task_not_found")
    result = await gateway.chat_request(context=context, task_code=task_code, body=openai_wire.json_body(body),
                                        idempotency_key=headers.get("idempotency-key"))
    if isinstance(result, gateway.GatewayResponse):
        return ApiResponse(result.status, result.headers, result.body)
    events, stream_headers = result
    return ApiResponse(200, {**SSE_HEADERS, **stream_headers}, events=events)


async def chat_completions_endpoint(*, method: str, headers: Mapping[str, str], body: bytes,
                                    task_code: str) -> ApiResponse:
    """POST /v1/{task}/chat/completions. `headers` are looked up by lower-case name."""
    if method != "POST":
        return _method_not_allowed("POST")
    return await _guard("chat_completions", lambda: _chat(headers, body, task_code))


def _models_for(entitlements: PlanEntitlements, models: list[ModelInfo], task_code: str) -> list[dict]:
    """Only what a request could be served by now: a model whose provider is configured (and priced:
    an unpriced model is never routed to), a class with at least one such model."""
    from llm.providers.registry import providers_configured  # to be moved to the module's imports

    allowed = entitlements.model_classes.get(task_code, ())
    created = int(time.time())
    configured = providers_configured()
    listed = [m for m in models if m.model_class in allowed and m.provider in configured and m.is_priced]
    servable_classes = {m.model_class for m in listed}
    entries = [{"id": code, "object": "model", "created": created, "owned_by": "gateway:model-class"}
               for code in allowed if code in servable_classes]
    entries += [{"id": m.model_name, "object": "model", "created": created, "owned_by": m.provider,
                 "model_class": m.model_class} for m in listed]
    return entries


def _catalog_for(plan_id: int) -> tuple[PlanEntitlements, list[ModelInfo]]:
    return plan_entitlements(plan_id), provider_models_active()


async def _models(headers: Mapping[str, str], task_code: str) -> ApiResponse:
    context = await authenticate_request(headers)
    if not await _task_exists(task_code):
        raise NotFound(f"Unknown task '{task_code}'.", code="task_not_found")
    entitlements, models = plan_entitlements_cached(context.plan_id), provider_models_cached()
    if entitlements is None or models is None:
        entitlements, models = await db_step(_catalog_for)(context.plan_id)
    return ApiResponse(200, {}, {"object": "list", "data": _models_for(entitlements, models, task_code)})


async def models_endpoint(*, method: str, headers: Mapping[str, str], task_code: str) -> ApiResponse:
    """GET /v1/{task}/models: the model classes and provider models the caller's plan allows."""
    if method != "GET":
        return _method_not_allowed("GET")
    return await _guard("models", lambda: _models(headers, task_code))


# --- Django adapter ------------------------------------------------------------------------------


def _django(result: ApiResponse) -> HttpResponse:
    if result.events is not None:
        response: HttpResponse = StreamingHttpResponse(result.events, status=result.status,
                                                       content_type="text/event-stream")
    else:
        response = JsonResponse(result.body, status=result.status, safe=False)
    for name, value in result.headers.items():
        response[name] = value
    return response


@csrf_exempt
async def chat_completions(request: HttpRequest, task_code: str) -> HttpResponse:
    try:
        body = request.body
    except RequestDataTooBig:
        return _django(request_too_large())
    return _django(await chat_completions_endpoint(method=request.method, headers=request.headers, body=body,
                                                   task_code=task_code))


async def models(request: HttpRequest, task_code: str) -> HttpResponse:
    return _django(await models_endpoint(method=request.method, headers=request.headers, task_code=task_code))


# --- shared with the task endpoints (llm/apis_tasks.py) ---------------------------------------------


def _json(response: gateway.GatewayResponse) -> JsonResponse:
    out = JsonResponse(response.body, status=response.status)
    for name, value in response.headers.items():
        out[name] = value
    return out


def _guarded(view):
    async def wrapper(request: HttpRequest, *args, **kwargs):
        try:
            return await view(request, *args, **kwargs)
        except GatewayError as error:
            return error_response(error)
        except Exception:
            logger.exception("unhandled error in %s", view.__name__)
            return JsonResponse(internal_error_payload(), status=500)

    wrapper.__name__ = view.__name__
    return wrapper


@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    from llm.metrics import exposition
    from llm.metrics_access import metrics_refusal

    refusal = metrics_refusal(request)
    if refusal is not None:
        response = error_response(refusal)
        if refusal.status_code == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = await db_step(exposition)()
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
