"""Anthropic's Messages API on the gateway: POST /v1/{TASK}/v1/messages (where the `anthropic` SDK
sends it, given base_url=".../v1/{TASK}") and POST /v1/{TASK}/messages.

The request is read by llm/anthropic_wire.py into the gateway's internal request and runs through
the same `MeteredCall` (llm/metered.py) and the same router as chat completions, on ANY configured
provider; only the answer's shape is Anthropic's: a message object, or the Messages stream events
(message_start, content_block_start, ping, content_block_delta with text_delta / input_json_delta,
content_block_stop, message_delta with the usage, message_stop), and errors as
{"type": "error", "error": {"type", "message"}} with the same statuses (and Retry-After) as the rest
of the gateway. Our own error code travels in the `X-Gateway-Error-Code` header.

Credentials: `x-api-key` (what the SDK sends with api_key=) or `Authorization: Bearer` (auth_token=),
checked by the same authentication as every /v1 endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway_project.errors import BadRequest, GatewayError, NotFound, internal_error_payload
from llm import anthropic_wire, apis, calls, gateway, openai_wire
from llm.auth import authenticate_request
from llm.metered import CallResponse, MeteredCall, SettledOnClose, provider_failure
from llm.providers.base import StreamDelta
from metering.models import UsageLog
from tenants.selectors import TenantContext

logger = logging.getLogger("gateway.llm.anthropic")


class _AuthHeaders(dict):
    """The request's headers by lower-case name, as the /v1 authentication reads them (a mapping, or a
    request whose `.headers` it is), with the SDK's `x-api-key` also offered as the bearer credential
    when no Authorization header came: both headers work however authentication reads them."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__((name.lower(), value) for name, value in headers.items())
        key = (self.get("x-api-key") or "").strip()
        if key and not self.get("authorization"):
            self["authorization"] = f"Bearer {key}"

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)

    @property
    def headers(self) -> _AuthHeaders:
        return self


def _anthropic(response: CallResponse | apis.ApiResponse) -> apis.ApiResponse:
    """A response in the gateway's error shape, re-shaped as Anthropic's (successes pass)."""
    headers = dict(response.headers)
    body = response.body
    if response.status >= 400 and isinstance(body, dict) and "error" in body:
        code = body["error"].get("code") if isinstance(body["error"], dict) else None
        if code:
            headers["X-Gateway-Error-Code"] = str(code)
        body = anthropic_wire.error_body(response.status, body)
    return apis.ApiResponse(response.status, headers, body)


def _metered_call(context: TenantContext, task_code: str, body: Any, parsed: anthropic_wire.MessagesInput,
                  idempotency_key: str | None) -> MeteredCall:
    chat = parsed.chat
    return MeteredCall(context=context, task_code=task_code, chat=chat, tokens_in=gateway.prompt_tokens(chat),
                       idempotency_key=idempotency_key,
                       fingerprint=openai_wire.fingerprint(f"anthropic:{task_code}", body))


async def _complete(call: MeteredCall, parsed: anthropic_wire.MessagesInput) -> CallResponse:
    if (refused := await call.admit()) is not None:
        return refused
    chat, decision = parsed.chat, call.decision
    async with call.running():
        try:
            result = await calls.chat_with_fallback(call.candidates, chat.messages, decision.max_tokens_out,
                                                    chat.temperature, call.spend, call.task_code, chat.options)
        except calls.AllCandidatesFailed as failure:
            response = provider_failure(failure.last)
            call.fail(UsageLog.Status.ERROR, response.body["error"]["code"])
        else:
            served = call.spend.attempts[-1].model
            response = CallResponse(200, anthropic_wire.message_body(
                request_id=call.request_id, model=served.model_name, result=result,
                stop_sequences=parsed.stop_sequences))
            call.succeed(response_status=200, response_body=response.body)
    response.headers.update(call.headers())
    return response


async def _events(call: MeteredCall, parsed: anthropic_wire.MessagesInput) -> AsyncIterator[bytes]:
    """The Messages stream. Text and tool calls each get their own content block, in the order the
    provider sends them; the final usage (what the ledger charged) is in message_delta."""
    chat, decision = parsed.chat, call.decision
    state = calls.StreamState()
    event = anthropic_wire.event
    message_id = f"msg_{call.request_id}"
    opened: int | None = None  # the index of the open content block
    kind: str | None = None  # "text" or ("tool", tool call index)
    blocks = 0
    tool_block: dict[int, int] = {}  # tool call index -> its block index
    started = False

    def start() -> bytes:
        model = call.spend.attempts[-1].model.model_name if call.spend.attempts else ""
        return (event("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": anthropic_wire.usage_body(None, tokens_in=call.tokens_in, tokens_out=1)}})
            + event("ping", {"type": "ping"}))

    def close() -> bytes:
        nonlocal opened
        if opened is None:
            return b""
        index, opened = opened, None
        return event("content_block_stop", {"type": "content_block_stop", "index": index})

    async with call.running():
        try:
            async for piece in calls.stream_with_fallback(call.candidates, chat.messages, decision.max_tokens_out,
                                                          chat.temperature, call.spend, state, call.task_code,
                                                          chat.options):
                out = b""
                if not started:
                    out, started = start(), True
                if isinstance(piece, str):
                    if kind != "text":
                        out += close()
                        opened, kind, blocks = blocks, "text", blocks + 1
                        out += event("content_block_start", {"type": "content_block_start", "index": opened,
                                                             "content_block": {"type": "text", "text": ""}})
                    out += event("content_block_delta", {"type": "content_block_delta", "index": opened,
                                                         "delta": {"type": "text_delta", "text": piece}})
                elif isinstance(piece, StreamDelta):
                    for part in piece.tool_calls:
                        if part.index not in tool_block:
                            out += close()
                            tool_block[part.index] = opened = blocks
                            kind, blocks = ("tool", part.index), blocks + 1
                            out += event("content_block_start", {
                                "type": "content_block_start", "index": opened,
                                "content_block": {"type": "tool_use", "id": part.id or f"toolu_{opened}",
                                                  "name": part.name or "", "input": {}}})
                        if part.arguments:
                            out += event("content_block_delta", {
                                "type": "content_block_delta", "index": tool_block[part.index],
                                "delta": {"type": "input_json_delta", "partial_json": part.arguments}})
                if out:
                    yield out
        except calls.AllCandidatesFailed as failure:
            failed = provider_failure(failure.last)
            call.fail(UsageLog.Status.ERROR, failed.body["error"]["code"])
            await call.settle()
            yield event("error", anthropic_wire.error_body(failed.status, failed.body))
            return
        outcome = call.succeed()
        # Settled before the last events: a client that reads the ledger right after message_stop
        # finds the call there, and message_delta carries the settled figures.
        await call.settle()
        out = start() if not started else b""
        out += close()
        reason, sequence = anthropic_wire.stop_reason(state.finish_reason, "".join(state.text), parsed.stop_sequences)
        usage = anthropic_wire.usage_body(None, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
                                          cached_in=outcome.tokens_cached_in, cache_write=outcome.tokens_cache_write)
        out += event("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason,
                                                                          "stop_sequence": sequence},
                                       "usage": usage})
        out += event("message_stop", {"type": "message_stop"})
        yield out


async def _messages(headers: Mapping[str, str], body: bytes, task_code: str) -> apis.ApiResponse:
    context = await authenticate_request(_AuthHeaders(headers))  # type: ignore[arg-type]
    if not await apis._task_exists(task_code):
        raise NotFound(f"Unknown task '{task_code}'.", code="task_not_found")
    raw = openai_wire.json_body(body)
    parsed = anthropic_wire.parse_messages_request(raw)
    idempotency_key = headers.get("idempotency-key")
    if parsed.chat.stream:
        if idempotency_key is not None:
            raise BadRequest("Idempotency-Key is not supported with stream: true.", code="invalid_idempotency_key")
        call = _metered_call(context, task_code, raw, parsed, None)
        if (refused := await call.admit()) is not None:
            return _anthropic(refused)
        return apis.ApiResponse(200, {**apis.SSE_HEADERS, **call.headers()},
                                events=SettledOnClose(call, _events(call, parsed)))
    call = _metered_call(context, task_code, raw, parsed, idempotency_key)
    return _anthropic(await _complete(call, parsed))


async def messages_endpoint(*, method: str, headers: Mapping[str, str], body: bytes, task_code: str
                            ) -> apis.ApiResponse:
    """POST /v1/{task}/v1/messages and /v1/{task}/messages. `headers` are looked up by lower-case name."""
    if method != "POST":
        error = GatewayError("Use POST here.", code="method_not_allowed", status_code=405)
        return _anthropic(apis.ApiResponse(405, {"Allow": "POST"}, error.payload()))
    try:
        return await _messages(headers, body, task_code)
    except GatewayError as error:
        return _anthropic(apis.ApiResponse(error.status_code, error.headers(), error.payload()))
    except Exception:
        logger.exception("unhandled error in messages")
        return _anthropic(apis.ApiResponse(500, {}, internal_error_payload()))


def request_too_large() -> apis.ApiResponse:
    return _anthropic(apis.request_too_large())


@csrf_exempt
async def messages(request: HttpRequest, task_code: str) -> HttpResponse:
    """The Django view (test client, WSGI); uvicorn's workers serve the path in llm/asgi.py."""
    try:
        body = request.body
    except RequestDataTooBig:
        return apis._django(request_too_large())
    headers = {name.lower(): value for name, value in request.headers.items()}
    return apis._django(await messages_endpoint(method=request.method, headers=headers, body=body,
                                                task_code=task_code))
