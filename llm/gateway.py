"""The metered chat pipeline (DESIGN.md §5): a chat-completions request, validated whole
(llm/openai_wire.py), then one `MeteredCall` (llm/metered.py):

identity -> policy -> admission (one short txn) -> provider (no DB held) -> settlement (one short txn)

Database work runs in `db_step` blocks between awaits; nothing holds a connection or a
transaction while a provider is awaited.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway_project.errors import BadRequest
from llm import calls, openai_wire
from llm.metered import CallResponse, MeteredCall, SettledOnClose, enforcement_mode, provider_failure
from llm.tokenizer import messages_tokens, text_tokens
from metering.models import UsageLog
from tenants.selectors import TenantContext

GatewayResponse = CallResponse  # the name the task pipelines and views use

__all__ = ["GatewayResponse", "chat_request", "enforcement_mode"]


# What an image part is held at before the provider reports its real count (OpenAI bills a
# high-detail 2048x2048 image at 1105 tokens; Gemini 258 per tile; Anthropic about 1600 at most).
IMAGE_TOKENS_HELD = 1600


def prompt_tokens(chat: openai_wire.ChatInput) -> int:
    """The input the worst case is held for: the messages, the tool definitions (providers bill them
    as input) and a ceiling per image. Settlement charges what the provider reports."""
    tokens = messages_tokens(chat.messages)
    options = chat.options
    if options.tools:
        tokens += text_tokens(json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                                          for t in options.tools], separators=(",", ":")))
    if options.response_format is not None and options.response_format.schema is not None:
        tokens += text_tokens(json.dumps(options.response_format.schema, separators=(",", ":")))
    images = sum(1 for m in chat.messages if isinstance(m.get("content"), list)
                 for part in m["content"] if part.get("type") == "image_url")
    return tokens + images * IMAGE_TOKENS_HELD


def _metered_call(context: TenantContext, task_code: str, body: Any, chat: openai_wire.ChatInput,
                  idempotency_key: str | None) -> MeteredCall:
    return MeteredCall(context=context, task_code=task_code, chat=chat, tokens_in=prompt_tokens(chat),
                       idempotency_key=idempotency_key, fingerprint=openai_wire.fingerprint(task_code, body))


async def chat_request(*, context: TenantContext, task_code: str, body: Any, idempotency_key: str | None = None
                       ) -> GatewayResponse | tuple[AsyncIterator[bytes], dict[str, str]]:
    """POST /v1/{task}/chat/completions after authentication: a JSON response, or (events, headers)
    for stream=true. The whole request is checked before anything is admitted."""
    chat = openai_wire.parse_chat_request(body)
    if chat.stream:
        if idempotency_key is not None:
            raise BadRequest("Idempotency-Key is not supported with stream=true.", code="invalid_idempotency_key")
        return await _stream(context, task_code, body, chat)
    return await _complete(context, task_code, body, chat, idempotency_key)


async def _complete(context: TenantContext, task_code: str, body: Any, chat: openai_wire.ChatInput,
                    idempotency_key: str | None) -> GatewayResponse:
    call = _metered_call(context, task_code, body, chat, idempotency_key)
    if (refused := await call.admit()) is not None:
        return refused
    decision = call.decision
    async with call.running():
        try:
            result = await calls.chat_with_fallback(call.candidates, chat.messages, decision.max_tokens_out,
                                                    chat.temperature, call.spend, task_code, chat.options)
        except calls.AllCandidatesFailed as failure:
            response = provider_failure(failure.last)
            call.fail(UsageLog.Status.ERROR, response.body["error"]["code"])
        else:
            served = call.spend.attempts[-1].model
            response = GatewayResponse(200, openai_wire.completion_body(call.request_id, served, result,
                                                                         int(time.time())))
            call.succeed(response_status=200, response_body=response.body)
    response.headers.update(call.headers())
    return response


async def _stream(context: TenantContext, task_code: str, body: Any, chat: openai_wire.ChatInput
                  ) -> GatewayResponse | tuple[AsyncIterator[bytes], dict[str, str]]:
    """Server-sent events in OpenAI's chunk format. Refusals come back as a plain error response
    before any event; after the first event, errors are reported in-band and the stream ends."""
    call = _metered_call(context, task_code, body, chat, None)
    if (refused := await call.admit()) is not None:
        return refused
    return SettledOnClose(call, _stream_events(call)), call.headers()


async def _stream_events(call: MeteredCall) -> AsyncIterator[bytes]:
    decision, chat = call.decision, call.chat
    state = calls.StreamState()
    created = int(time.time())
    chunk_id = f"chatcmpl-{call.request_id}"

    def model() -> str:
        return call.spend.attempts[-1].model.model_name if call.spend.attempts else ""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return openai_wire.chunk(chunk_id=chunk_id, created=created, model=model(), delta=delta, finish=finish)

    async with call.running():
        first = True
        try:
            async for piece in calls.stream_with_fallback(call.candidates, chat.messages, decision.max_tokens_out,
                                                          chat.temperature, call.spend, state, call.task_code,
                                                          chat.options):
                if first:
                    yield chunk({"role": "assistant", "content": ""})
                    first = False
                if isinstance(piece, str):
                    yield chunk({"content": piece})
                else:  # tool-call pieces, in OpenAI's streamed shape
                    yield chunk({"tool_calls": openai_wire.tool_call_deltas_body(piece.tool_calls)})
        except calls.AllCandidatesFailed as failure:
            failed = provider_failure(failure.last)
            call.fail(UsageLog.Status.ERROR, failed.body["error"]["code"])
            await call.settle()
            yield openai_wire.sse(failed.body)
            yield openai_wire.DONE
            return
        outcome = call.succeed()
        # Settled before the last chunks: a client that reads its usage right after [DONE] finds
        # the call in the ledger, and the usage chunk carries the settled figures.
        await call.settle()
        if first:
            yield chunk({"role": "assistant", "content": ""})
        yield chunk({}, state.finish_reason)
        if chat.include_usage:
            yield openai_wire.usage_chunk(chunk_id=chunk_id, created=created, model=model(),
                                          tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
                                          cached_in=outcome.tokens_cached_in)
        yield openai_wire.DONE
