"""Anthropic's Messages API through the official `anthropic` SDK: one `AsyncAnthropic` per provider
instance and event loop (see `PerLoop`), max_retries=0 (the router owns retries).

System messages are hoisted into the top-level `system`; user / assistant messages pass as text.
The request carries no `temperature`: SDK 2.x speaks API version 2026-10-21, which removed the
sampling parameters (sending one is a 400), and the SDK no longer accepts them.

Usage: input is `input_tokens` + cache creation + cache reads (all billed input), output is
`output_tokens`. In a stream, `message_start` reports the input, and each `message_delta` the
cumulative output (not an increment). An `error` event inside a 200 stream is mapped by its type.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from llm.providers._common import (
    MALFORMED_ERRORS,
    PerLoop,
    StreamMeter,
    connection_failed,
    for_status,
    for_transport,
    malformed,
)
from llm.providers.base import (
    ChatRequest,
    ChatResult,
    GenerationOptions,
    ProviderConnectionError,
    ProviderContentFiltered,
    ProviderError,
    ProviderTimeout,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llm.providers.scrub import secret_register
from llm.tokenizer import message_text, messages_tokens

DEFAULT_BASE_URL = "https://api.anthropic.com"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls"}
# An error event inside a 200 stream has no status of its own; its type names the equivalent one.
ERROR_TYPE_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                     "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                     "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


def anthropic_options(options: GenerationOptions) -> dict[str, Any]:
    """The request's options in the Messages API's terms (what `unsupported` does not refuse)."""
    params: dict[str, Any] = {}
    if options.tools:
        params["tools"] = [{"name": t.name, "input_schema": t.parameters,
                            **({"description": t.description} if t.description else {}),
                            **({"strict": t.strict} if t.strict is not None else {})} for t in options.tools]
    choice = options.tool_choice
    if choice is not None or options.parallel_tool_calls is False:
        mode = choice.mode if choice is not None else "auto"
        tool_choice: dict[str, Any] = {"auto": {"type": "auto"}, "none": {"type": "none"},
                                       "required": {"type": "any"}}.get(mode) or {"type": "tool", "name": choice.name}
        if options.parallel_tool_calls is False and mode != "none":
            tool_choice["disable_parallel_tool_use"] = True
        params["tool_choice"] = tool_choice
    fmt = options.response_format
    if fmt is not None and fmt.type != "text":
        # JSON mode is structured output with the most general schema: some JSON object.
        schema = fmt.schema if fmt.type == "json_schema" else {"type": "object"}
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if options.stop:
        params["stop_sequences"] = list(options.stop)
    if options.user is not None:
        params["metadata"] = {"user_id": options.user}
    return params


def _input_tokens(usage: Any) -> int:
    return (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


def _usage(usage: Any, tokens_out: int) -> Usage:
    """All prompt tokens as tokens_in; cache reads and writes, which Anthropic reports beside
    `input_tokens`, as the parts priced apart."""
    return Usage(_input_tokens(usage), tokens_out, cached_in=usage.cache_read_input_tokens or 0,
                 cache_write=usage.cache_creation_input_tokens or 0)


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float = 60.0) -> None:
        if not api_key:  # no silent fallback to environment variables or profile files
            raise ValueError("anthropic needs an API key")
        self.base_url = base_url or DEFAULT_BASE_URL
        secret_register(api_key)  # scrubbed from any error text that quotes it
        base = self.base_url
        self._clients: PerLoop[anthropic.AsyncAnthropic] = PerLoop(
            lambda: anthropic.AsyncAnthropic(api_key=api_key, base_url=base, timeout=timeout, max_retries=0),
            close=lambda client: client.close(),
        )

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int:
        return messages_tokens(messages, model=model)

    async def aclose(self) -> None:
        """Close the running event loop's client now (it is otherwise closed when its loop shuts down)."""
        await self._clients.aclose()

    def unsupported(self, request: ChatRequest) -> list[str]:
        # No sampling parameters in API version 2026-10-21 (top_p is a 400 there), no seed, penalties,
        # several completions, logprobs, or free-form metadata (only metadata.user_id, which `user` maps to).
        return [n for n in request.options.asked() if n in (
            "top_p", "seed", "n", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "metadata")]

    @staticmethod
    def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
        """One OpenAI-shaped message as Anthropic content blocks."""
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            return [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": message_text(message)}]
        blocks: list[dict[str, Any]] = []
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    blocks.append({"type": "text", "text": part["text"]})
                elif part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    if url.startswith("data:"):
                        header, _, data = url.partition(",")
                        source = {"type": "base64", "media_type": header[5:].removesuffix(";base64"), "data": data}
                    else:
                        source = {"type": "url", "url": url}
                    blocks.append({"type": "image", "source": source})
        elif content:
            blocks.append({"type": "text", "text": content})
        for call in message.get("tool_calls") or ():
            try:
                arguments = json.loads(call["function"]["arguments"] or "{}")
            except ValueError:
                arguments = {}
            blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                           "input": arguments if isinstance(arguments, dict) else {}})
        return blocks

    @classmethod
    def _params(cls, request: ChatRequest) -> dict[str, Any]:
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            role = message.get("role")
            if role in ("system", "developer"):
                system.append(message_text(message))
                continue
            anthropic_role = "assistant" if role == "assistant" else "user"
            blocks = cls._blocks(message)
            if messages and messages[-1]["role"] == anthropic_role and isinstance(messages[-1]["content"], list):
                messages[-1]["content"].extend(blocks)  # tool results (and what follows) share one user turn
            elif all(b["type"] == "text" for b in blocks) and role != "tool":
                messages.append({"role": anthropic_role, "content": "".join(b["text"] for b in blocks)
                                 if len(blocks) <= 1 else blocks})
            else:
                messages.append({"role": anthropic_role, "content": blocks})
        params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": messages}
        if system:
            params["system"] = "\n\n".join(system)
        params.update(anthropic_options(request.options))
        return params

    def _map(self, exc: Exception, *, tokens_in: int = 0, tokens_out: int = 0) -> ProviderError | None:
        tokens = {"tokens_in": tokens_in, "tokens_out": tokens_out}
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderTimeout("timed out", provider=self.name, **tokens)
        if isinstance(exc, anthropic.APIConnectionError):
            return connection_failed(self.name, exc, **tokens)
        if isinstance(exc, anthropic.APIResponseValidationError):
            return malformed(self.name, exc, **tokens)
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            if status < 400:  # an error event in a 200 stream
                status = ERROR_TYPE_STATUS.get(exc.type or "", 500)
            detail = " ".join(str(part) for part in (exc.type, exc.api_message or exc.message) if part)
            return for_status(self.name, status, detail, **tokens)
        mapped = for_transport(self.name, exc, **tokens)  # raw httpx2 errors escape from streams
        if mapped is not None:
            return mapped
        if isinstance(exc, MALFORMED_ERRORS):
            return malformed(self.name, exc, **tokens)
        return None

    async def chat(self, request: ChatRequest) -> ChatResult:
        client = await self._clients.get()
        try:
            message = await client.messages.create(**self._params(request))
        except Exception as exc:
            mapped = self._map(exc)
            if mapped is None:
                raise
            raise mapped from exc
        try:
            text = "".join(block.text for block in message.content if block.type == "text")
            calls = [ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input, separators=(",", ":")))
                     for block in message.content if block.type == "tool_use"]
            usage = _usage(message.usage, message.usage.output_tokens)
            stop = message.stop_reason
            response_id = message.id or ""
        except MALFORMED_ERRORS as exc:  # JSON without the fields (the SDK does not validate)
            raise malformed(self.name, f"incomplete message: {type(exc).__name__}: {exc}") from exc
        if not isinstance(usage.tokens_out, int):
            raise malformed(self.name, "usage.output_tokens missing")
        if stop == "refusal":
            raise ProviderContentFiltered("the model refused (stop_reason refusal)", provider=self.name,
                                          tokens_in=usage.tokens_in, tokens_out=usage.tokens_out)
        return ChatResult(text=text, finish_reason=STOP_REASONS.get(stop or "", "stop"), usage=usage,
                          provider_response_id=response_id, tool_calls=calls)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        client = await self._clients.get()
        try:
            stream = await client.messages.create(**self._params(request), stream=True)
        except Exception as exc:
            mapped = self._map(exc)
            if mapped is None:
                raise
            raise mapped from exc
        meter = StreamMeter(self, request)
        meter.started = True
        stop: str | None = None
        tokens_in: int | None = None
        tokens_out: int | None = None
        reported_usage: Any = None  # the last usage object with the input side (its cache splits)
        tool_index: dict[int, int] = {}  # content block index -> OpenAI tool call index
        try:
            async for event in stream:
                if event.type == "message_start":
                    tokens_in = meter.reported_in = _input_tokens(event.message.usage)
                    reported_usage = event.message.usage
                elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                    tool_index[event.index] = len(tool_index)
                    yield StreamDelta(tool_calls=[ToolCallDelta(index=tool_index[event.index],
                                                                id=event.content_block.id,
                                                                name=event.content_block.name)])
                elif event.type == "content_block_delta":
                    if event.delta.type == "text_delta" and event.delta.text:
                        meter.add(event.delta.text)
                        yield StreamDelta(text=event.delta.text)
                    elif event.delta.type == "input_json_delta" and event.delta.partial_json \
                            and event.index in tool_index:
                        meter.add(event.delta.partial_json)
                        yield StreamDelta(tool_calls=[ToolCallDelta(index=tool_index[event.index],
                                                                    arguments=event.delta.partial_json)])
                elif event.type == "message_delta":
                    stop = event.delta.stop_reason or stop
                    tokens_out = meter.reported_out = event.usage.output_tokens  # cumulative
                    if event.usage.input_tokens is not None:  # cumulative too, when present
                        tokens_in = meter.reported_in = _input_tokens(event.usage)
                        reported_usage = event.usage
        except Exception as exc:
            mapped = self._map(exc, **meter.consumed())
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            await stream.close()
        if stop is None:  # the body ended cleanly without message_delta: a cut
            raise ProviderConnectionError("the stream ended before the answer finished", provider=self.name,
                                          **meter.consumed())
        usage = (_usage(reported_usage, tokens_out) if tokens_in is not None and tokens_out is not None
                 and reported_usage is not None else None)
        if stop == "refusal":
            spent = {"tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out} if usage else meter.consumed()
            raise ProviderContentFiltered("the model refused (stop_reason refusal)", provider=self.name, **spent)
        yield StreamDelta(finish_reason=STOP_REASONS.get(stop, "stop"), usage=usage)
