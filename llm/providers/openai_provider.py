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
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderContentFiltered,
    ProviderError,
    ProviderOverloaded,
    ProviderRateLimited,
    ProviderTimeout,
    StreamDelta,
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

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": request.model, "messages": request.messages,
                                  self._max_tokens_param: request.max_tokens}
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    @staticmethod
    def _usage(usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        total = usage.get("total_tokens")
        return Usage(prompt, max(completion, total - prompt) if isinstance(total, int) else completion)

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
            choice = completion["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            response_id = completion.get("id") or ""
            usage = self._usage(completion.get("usage"))
        except MALFORMED_ERRORS as exc:  # JSON without the fields
            raise malformed(self.name, f"no choices[0].message: {exc}") from exc
        if not isinstance(text, str):
            raise malformed(self.name, "choices[0].message.content is not text")
        if usage is None:  # some local servers omit it: counted here, flagged as estimated
            usage = Usage(self.count_tokens(request.messages, request.model), text_tokens(text, request.model),
                          estimated=True)
        if finish == "content_filter":
            raise ProviderContentFiltered("the answer was stopped by the content filter", provider=self.name,
                                          tokens_in=usage.tokens_in, tokens_out=usage.tokens_out)
        return ChatResult(text=text, finish_reason=finish, usage=usage, provider_response_id=response_id)

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
