"""OpenAI-compatible metered API, one base URL per task: /v1/{TASK_CODE}/chat/completions and /models.

Plain async Django views (DRF is sync): they validate, call the gateway pipeline, and answer
in OpenAI's shapes or the one error shape.
"""

from __future__ import annotations

import json
import logging
import time

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from catalog.selectors import plan_entitlements, provider_models_active, task_get
from gateway_project.errors import BadRequest, GatewayError, NotFound, error_response, internal_error_payload
from llm import gateway
from llm.auth import authenticate_request
from llm.db import db_step

logger = logging.getLogger("gateway.llm.api")


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


@csrf_exempt
@require_POST
@_guarded
async def chat_completions(request: HttpRequest, task_code: str) -> JsonResponse:
    context = await authenticate_request(request)
    if await db_step(task_get)(task_code) is None:
        raise NotFound(f"Unknown task '{task_code}'.", code="task_not_found")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    if isinstance(body, dict) and body.get("stream") is True:
        streamed = await gateway.chat_completion_stream(
            context=context, task_code=task_code, body=body, idempotency_key=request.headers.get("Idempotency-Key")
        )
        if isinstance(streamed, gateway.GatewayResponse):
            return _json(streamed)
        events, headers = streamed
        response = StreamingHttpResponse(events, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        for name, value in headers.items():
            response[name] = value
        return response
    response = await gateway.chat_completion(
        context=context, task_code=task_code, body=body, idempotency_key=request.headers.get("Idempotency-Key")
    )
    return _json(response)


def _models_for(plan_id: int, task_code: str) -> list[dict]:
    allowed = plan_entitlements(plan_id).model_classes.get(task_code, ())
    created = int(time.time())
    entries = [{"id": code, "object": "model", "created": created, "owned_by": "gateway:model-class"}
               for code in allowed]
    entries += [{"id": m.model_name, "object": "model", "created": created, "owned_by": m.provider,
                 "model_class": m.model_class} for m in provider_models_active() if m.model_class in allowed]
    return entries


@require_GET
@_guarded
async def models(request: HttpRequest, task_code: str) -> JsonResponse:
    context = await authenticate_request(request)
    if await db_step(task_get)(task_code) is None:
        raise NotFound(f"Unknown task '{task_code}'.", code="task_not_found")
    data = await db_step(_models_for)(context.plan_id, task_code)
    return JsonResponse({"object": "list", "data": data})


@require_GET
async def metrics_view(request: HttpRequest) -> HttpResponse:
    from llm.metrics import exposition

    body = await db_step(exposition)()
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
