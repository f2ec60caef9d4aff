"""Chat completions through the official `openai` SDK: OpenAI, xAI Grok (the same API at xAI's base
URL) and any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio).

One `AsyncOpenAI` client per provider instance and event loop (see `PerLoop`), `max_retries=0`:
the gateway's router owns retries and fallback. The client sends through the SDK's aiohttp transport
(`DefaultAioHttpClient`, the SDK's documented choice for concurrency): a call cost about 1.9 ms over
its default httpx2/httpcore2 stack against a local upstream here, 1.1-1.5 ms over aiohttp.

Streams ask for usage (`stream_options.include_usage`); a server that ignores the option yields a
final delta with `usage=None` and the gateway counts the tokens itself.

The calls go through the SDK's own `post` (its HTTP client, auth and default headers, status
handling and error classes) with the JSON body we build and `cast_to=object`: the response (and each
stream chunk) stays the parsed JSON dict. `chat.completions.create` would walk our plain params
through its recursive TypedDict transform and build pydantic models of every answer and chunk,
about 2.7 ms per call on the benchmark machine, for fields we then read straight back out.

Output tokens are `max(completion_tokens, total_tokens - prompt_tokens)`: OpenAI counts reasoning
tokens inside `completion_tokens`, xAI reports them beside it (its `total_tokens` includes them),
and both are billed as output.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
from openai import AsyncStream
from openai._types import RequestOptions

from llm.providers._common import MALFORMED_ERRORS, PerLoop, StreamMeter, connection_failed, for_status, malformed
from llm.providers.base import (
    ChatRequest,
    ChatResult,
    Choice,
    GenerationOptions,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderContentFiltered,
    ProviderError,
    ProviderOverloaded,
    ProviderRateLimited,
    ProviderTimeout,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llm.providers.scrub import secret_register
from llm.tokenizer import messages_tokens, text_tokens

NAMES = ("openai", "grok", "openai_compatible")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "grok": "https://api.x.ai/v1"}
KEYLESS_PLACEHOLDER = "not-needed"  # local servers ignore the key; the SDK insists on one
# Error codes OpenAI (content_policy_violation, invalid_prompt) and Azure OpenAI (content_filter)
# use when the input itself was refused by a content policy.
CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "invalid_prompt"})
# What `chat.completions.create` passes: the SDK adds the bearer key only when asked to.
REQUEST_OPTIONS: RequestOptions = {"security": {"bearer_auth": True}}


def _connect_failed(exc: BaseException) -> bool:
    """The aiohttp transport reports every connection failure (refused, unresolvable host, server
    gone) as a connect *timeout*; aiohttp's own error, further down the chain, tells them apart."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, aiohttp.ServerTimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def openai_options(options: GenerationOptions) -> dict[str, Any]:
    """The request's options in OpenAI's chat-completions wire format (what the client sent, re-built)."""
    params: dict[str, Any] = {}
    if options.tools:
        params["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters,
            **({"strict": t.strict} if t.strict is not None else {})}} for t in options.tools]
    if options.tool_choice is not None:
        choice = options.tool_choice
        params["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                                 if choice.mode == "function" else choice.mode)
    if options.parallel_tool_calls is not None:
        params["parallel_tool_calls"] = options.parallel_tool_calls
    if options.response_format is not None:
        fmt = options.response_format
        if fmt.type == "json_schema":
            spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
            if fmt.strict is not None:
                spec["strict"] = fmt.strict
            params["response_format"] = {"type": "json_schema", "json_schema": spec}
        else:
            params["response_format"] = {"type": fmt.type}
    if options.stop:
        params["stop"] = list(options.stop)
    for name in ("top_p", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "user",
                 "metadata"):
        if (value := getattr(options, name)) is not None:
            params[name] = value
    if options.n != 1:
        params["n"] = options.n
    return params


def _choice(choice: dict[str, Any]) -> Choice:
    message = choice["message"]
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise TypeError("message.content is not text")
    calls = [ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"].get("arguments") or "")
             for c in message.get("tool_calls") or ()]
    return Choice(text=text, finish_reason=choice.get("finish_reason") or "stop", tool_calls=calls,
                  logprobs=choice.get("logprobs"))


def _tool_call_delta(piece: dict[str, Any]) -> ToolCallDelta:
    function = piece.get("function") or {}
    arguments = function.get("arguments") or ""
    if not isinstance(arguments, str) or not isinstance(piece.get("index"), int):
        raise TypeError("a malformed tool_calls delta")
    return ToolCallDelta(index=piece["index"], id=piece.get("id"), name=function.get("name"), arguments=arguments)


def _detail(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


class OpenAIProvider:
    def __init__(self, name: str, api_key: str | None, base_url: str | None, timeout: float = 60.0) -> None:
        if name not in NAMES:
            raise ValueError(f"OpenAIProvider serves {', '.join(NAMES)}, not {name!r}")
        base_url = base_url or DEFAULT_BASE_URLS.get(name)
        if not base_url:
            raise ValueError(f"{name} needs a base URL (the server's OpenAI-compatible /v1 endpoint)")
        if not api_key and name != "openai_compatible":
            # Never let the SDK fall back to OPENAI_API_KEY: it would send OpenAI's key to another vendor.
            raise ValueError(f"{name} needs an API key")
        self.name = name
        self.base_url = base_url
        secret_register(api_key)  # scrubbed from any error text that quotes it
        self._max_tokens_param = "max_completion_tokens" if name == "openai" else "max_tokens"
        self._clients: PerLoop[openai.AsyncOpenAI] = PerLoop(
            lambda: openai.AsyncOpenAI(api_key=api_key or KEYLESS_PLACEHOLDER, base_url=base_url, timeout=timeout,
                                       max_retries=0, http_client=openai.DefaultAioHttpClient()),
            close=lambda client: client.close(),
        )

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int:
        return messages_tokens(messages, model=model)

    async def aclose(self) -> None:
        """Close the running event loop's client now (it is otherwise closed when its loop shuts down)."""
        await self._clients.aclose()

    def unsupported(self, request: ChatRequest) -> list[str]:
        return []  # the gateway's request is OpenAI's: every parameter passes through as sent

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": request.model, "messages": request.messages,
                                  self._max_tokens_param: request.max_tokens}
        if request.temperature is not None:
            params["temperature"] = request.temperature
        params.update(openai_options(request.options))
        return params

    @staticmethod
    def _usage(usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        total = usage.get("total_tokens")
        # Cache hits are part of prompt_tokens (OpenAI and xAI alike), billed at the cached rate.
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Usage(prompt, max(completion, total - prompt) if isinstance(total, int) else completion,
                     cached_in=cached if isinstance(cached, int) and not isinstance(cached, bool) and cached > 0 else 0)

    def _error(self, exc: openai.OpenAIError, *, tokens_in: int = 0, tokens_out: int = 0) -> ProviderError:
        tokens: dict[str, Any] = {"provider": self.name, "tokens_in": tokens_in, "tokens_out": tokens_out}
        if isinstance(exc, openai.APITimeoutError) and not _connect_failed(exc):
            return ProviderTimeout("timed out", **tokens)
        if isinstance(exc, openai.APIConnectionError):
            return connection_failed(self.name, exc, tokens_in=tokens_in, tokens_out=tokens_out)
        if isinstance(exc, openai.APIResponseValidationError):
            return malformed(self.name, exc, tokens_in=tokens_in, tokens_out=tokens_out)
        if isinstance(exc, openai.APIStatusError):
            detail = _detail(exc)
            if exc.status_code == 400 and (exc.code in CONTENT_FILTER_CODES or "content management policy" in detail):
                return ProviderContentFiltered(f"refused by the content policy: {detail}", **tokens)
            return for_status(self.name, exc.status_code, detail, tokens_in=tokens_in, tokens_out=tokens_out)
        if isinstance(exc, openai.APIError):  # an error object inside a 200 stream
            kind = f"{exc.code or ''} {exc.type or ''}"
            message = f"error in the stream: {_detail(exc)}"
            if exc.code in CONTENT_FILTER_CODES:
                return ProviderContentFiltered(message, **tokens)
            if "rate_limit" in kind:
                return ProviderRateLimited(message, **tokens)
            if "invalid_request" in kind:
                return ProviderBadRequest(message, **tokens)
            return ProviderOverloaded(message, **tokens)
        return ProviderOverloaded(f"{type(exc).__name__}: {exc}", **tokens)

    async def chat(self, request: ChatRequest) -> ChatResult:
        client = await self._clients.get()
        try:
            completion: Any = await client.post("/chat/completions", body=self._params(request), cast_to=object,
                                                options=REQUEST_OPTIONS)
            if isinstance(completion, str):  # the SDK hands back the text of a non-JSON content type
                completion = json.loads(completion)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        except MALFORMED_ERRORS as exc:  # a 200 whose body is not JSON
            raise malformed(self.name, exc) from exc
        try:
            choices = sorted(completion["choices"], key=lambda c: c.get("index") or 0)
            parsed = [_choice(c) for c in choices]
            first = parsed[0]
            response_id = completion.get("id") or ""
            usage = self._usage(completion.get("usage"))
        except MALFORMED_ERRORS as exc:  # JSON without the fields
            raise malformed(self.name, f"no choices[0].message: {exc}") from exc
        if usage is None:  # some local servers omit it: counted here, flagged as estimated
            out = "".join(c.text + "".join(t.arguments for t in c.tool_calls) for c in parsed)
            usage = Usage(self.count_tokens(request.messages, request.model), text_tokens(out, request.model),
                          estimated=True)
        if first.finish_reason == "content_filter":
            raise ProviderContentFiltered("the answer was stopped by the content filter", provider=self.name,
                                          tokens_in=usage.tokens_in, tokens_out=usage.tokens_out)
        return ChatResult(text=first.text, finish_reason=first.finish_reason, usage=usage,
                          provider_response_id=response_id, tool_calls=first.tool_calls, logprobs=first.logprobs,
                          alternatives=parsed[1:])

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        params = {**self._params(request), "stream": True, "stream_options": {"include_usage": True}}
        client = await self._clients.get()
        try:
            stream = await client.post("/chat/completions", body=params, cast_to=object, options=REQUEST_OPTIONS,
                                       stream=True, stream_cls=AsyncStream[object])
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        except MALFORMED_ERRORS as exc:
            raise malformed(self.name, exc) from exc
        meter = StreamMeter(self, request)
        meter.started = True
        finish: str | None = None
        usage: Usage | None = None
        try:
            async for chunk in stream:  # each chunk is its parsed JSON object
                if chunk.get("usage") is not None:
                    usage = self._usage(chunk["usage"]) or usage
                for choice in chunk.get("choices") or ():
                    if choice.get("index") != 0:
                        continue
                    delta = choice.get("delta")
                    piece = delta.get("content") if delta is not None else None
                    if piece:
                        if not isinstance(piece, str):
                            raise TypeError("delta.content is not text")
                        meter.add(piece)
                        yield StreamDelta(text=piece)
                    if delta is not None and delta.get("tool_calls"):
                        calls = [_tool_call_delta(d) for d in delta["tool_calls"]]
                        meter.add("".join(c.arguments for c in calls))
                        yield StreamDelta(tool_calls=calls)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        except openai.OpenAIError as exc:
            raise self._error(exc, **meter.consumed()) from exc
        except MALFORMED_ERRORS as exc:
            raise malformed(self.name, exc, **meter.consumed()) from exc
        finally:
            await stream.close()
        if finish is None:  # the body ended cleanly but the model never finished: a cut
            raise ProviderConnectionError("the stream ended before the answer finished", provider=self.name,
                                          **meter.consumed())
        if finish == "content_filter":
            spent = {"tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out} if usage else meter.consumed()
            raise ProviderContentFiltered("the answer was stopped by the content filter", provider=self.name, **spent)
        yield StreamDelta(finish_reason=finish, usage=usage)
