"""Task endpoints: POST /api/prior-art/, /api/drafting/, /api/diagrams/ (add ?stream=1 for progress events)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from llm import gateway, openai_wire
from llm.adapters import adapter_get
from llm.adapters.runner import run_task
from llm.apis import _guarded, _json
from llm.auth import authenticate_request


def _task_view(task_code: str):
    @csrf_exempt
    @require_POST
    @_guarded
    async def view(request: HttpRequest) -> JsonResponse | StreamingHttpResponse:
        context = await authenticate_request(request)
        payload = openai_wire.json_body(request.body)
        stream = request.GET.get("stream") in {"1", "true"}
        outcome = await run_task(context=context, adapter=adapter_get(task_code), payload=payload, stream=stream,
                                 idempotency_key=request.headers.get("Idempotency-Key"))
        if isinstance(outcome, gateway.GatewayResponse):
            return _json(outcome)
        events, headers = outcome
        response = StreamingHttpResponse(events, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        for name, value in headers.items():
            response[name] = value
        return response

    view.__name__ = f"task_{task_code.lower()}"
    return view


prior_art = _task_view("LLM1_PRIOR_ART")
drafting = _task_view("LLM2_DRAFT")
diagrams = _task_view("LLM3_DIAGRAM")
