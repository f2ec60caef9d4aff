"""The one async provider interface and the typed error taxonomy every provider maps onto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm.providers.scrub import scrub

# --- the internal chat request ---------------------------------------------------------------------
#
# One request type for every front end (the OpenAI chat-completions wire in llm/openai_wire.py, the
# Anthropic Messages wire) and every provider. Messages stay in OpenAI's chat shape, which every front
# end converts into and every provider converts out of:
#
#   {"role": "system" | "developer" | "user", "content": str | [parts]}
#       parts: {"type": "text", "text": str} | {"type": "image_url", "image_url": {"url": str, "detail"?}}
#       (url: https://... or data:<mime>;base64,<data>)
#   {"role": "assistant", "content": str | None, "tool_calls"?: [{"id", "type": "function",
#                                                                  "function": {"name", "arguments": str}}]}
#   {"role": "tool", "tool_call_id": str, "content": str | [text parts]}
#
# Everything else a request can ask for is a typed field of `GenerationOptions`. A provider either
# maps a field onto its own API or lists it in `unsupported(request)`; the gateway drops the
# candidates that cannot serve a request before admission (llm/providers/capabilities.py), so no
# field is ever silently dropped.


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "auto" | "none" | "required" | "function" (then `name` is the one tool to call)
    name: str | None = None


@dataclass(frozen=True)
class ResponseFormat:
    type: str  # "text" | "json_object" | "json_schema"
    name: str = ""
    schema: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class GenerationOptions:
    """Every optional generation parameter, typed. Defaults mean "not asked for"."""

    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None

    def asked(self) -> list[str]:
        """The names (as the OpenAI wire spells them) of the parameters this request sets."""
        names = [name for name, value in (
            ("tools", self.tools), ("tool_choice", self.tool_choice),
            ("parallel_tool_calls", self.parallel_tool_calls), ("stop", self.stop), ("top_p", self.top_p),
            ("seed", self.seed), ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty), ("logprobs", self.logprobs),
            ("top_logprobs", self.top_logprobs), ("user", self.user), ("metadata", self.metadata),
        ) if value not in (None, ())]
        if self.n != 1:
            names.append("n")
        if self.response_format is not None and self.response_format.type != "text":
            names.append(f"response_format.{self.response_format.type}")
        return names


NO_OPTIONS = GenerationOptions()


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(part, dict) and part.get("type") == "image_url"
               for m in messages if isinstance(m.get("content"), list) for part in m["content"])


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's model name
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    options: GenerationOptions = NO_OPTIONS

    def asked(self) -> list[str]:
        """What this request asks of a provider beyond plain text chat (names for a 400)."""
        names = self.options.asked()
        if has_images(self.messages):
            names.append("image_url content parts")
        return names


@dataclass
class Usage:
    tokens_in: int
    tokens_out: int
    estimated: bool = False  # counted by the gateway because the provider reported none
    # Of tokens_in (which is ALL prompt tokens): read from the provider's prompt cache, and written
    # to it. Priced apart (catalog/pricing.py); token limits count all of tokens_in.
    cached_in: int = 0
    cache_write: int = 0


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI returns it


@dataclass
class Choice:
    """One completion. `ChatResult` is choice 0; `ChatResult.alternatives` are choices 1.. of n."""

    text: str
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: Any = None  # the provider's logprobs object (OpenAI shape), when asked for


@dataclass
class ChatResult:
    text: str
    finish_reason: str
    usage: Usage  # of all n choices together
    provider_response_id: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: Any = None
    alternatives: list[Choice] = field(default_factory=list)

    def choices(self) -> list[Choice]:
        return [Choice(self.text, self.finish_reason, self.tool_calls, self.logprobs), *self.alternatives]


@dataclass
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams them: the first piece of call `index`
    carries its id and name, the following ones fragments of its JSON arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class StreamDelta:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None  # set on the final chunk when the provider reports usage
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


DETAIL_LIMIT = 500


class ProviderError(Exception):
    """Base of the taxonomy. `retryable` says whether the router may try the next candidate.

    Two texts, kept apart: `detail` is what the provider said (scrubbed of credentials, for the
    server log and the ledger: it can name internal hosts and ports); `message` is ours, the only
    one a tenant ever sees: which kind of provider failed and whether retrying may help. `str()` of
    the error is the message, so an error formatted into a response by mistake leaks nothing.
    """

    kind = "provider_error"
    retryable = False
    status_code = 502
    # Our words for the tenant; {provider} is the provider kind ("openai", "anthropic", ...).
    summary = "The {provider} provider failed."
    hint = "Retrying may help."

    def __init__(self, detail: str = "", *, provider: str = "", tokens_in: int = 0, tokens_out: int = 0) -> None:
        self.detail = scrub(detail)[:DETAIL_LIMIT]
        self.provider = provider  # set by the provider, or by the router from the model it called
        super().__init__(self.detail)
        # What was consumed before the failure is still charged.
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out

    @property
    def code(self) -> str:
        return self.kind

    @property
    def message(self) -> str:
        return f"{self.summary.format(provider=self.provider or 'upstream')} {self.hint}"

    def __str__(self) -> str:
        return self.message


class ProviderAuthError(ProviderError):
    """401 / 402 / 403: the platform's key is wrong, out of credit or not allowed. Our
    misconfiguration, not the caller's: the router falls back to the next candidate, opens this
    model's breaker at once and alerts super admins."""

    kind = "provider_auth"
    retryable = True
    summary = "The {provider} provider refused the gateway's credentials; this is a configuration problem on our side."
    hint = "Operators have been alerted; retrying later may help."


class ProviderRateLimited(ProviderError):
    kind = "provider_rate_limited"
    retryable = True
    status_code = 503
    summary = "The {provider} provider is rate limiting the gateway."
    hint = "Retrying after a short wait may help."


class ProviderOverloaded(ProviderError):
    kind = "provider_overloaded"
    retryable = True
    status_code = 503
    summary = "The {provider} provider failed or sent an answer the gateway could not read."
    hint = "Retrying may help."


class ProviderTimeout(ProviderError):
    kind = "provider_timeout"
    retryable = True
    status_code = 504
    summary = "The {provider} provider did not answer in time."
    hint = "Retrying may help."


class ProviderConnectionError(ProviderError):
    kind = "provider_connection"
    retryable = True
    status_code = 503
    summary = "The gateway could not reach the {provider} provider, or the connection broke."
    hint = "Retrying may help."


class ProviderBadRequest(ProviderError):
    kind = "provider_bad_request"
    status_code = 400
    summary = ("The {provider} provider rejected the request (for example a parameter it does not accept, or an "
               "input longer than the model takes).")
    hint = "Retrying the same request will not help."


class ProviderContentFiltered(ProviderError):
    kind = "provider_content_filtered"
    status_code = 400
    summary = "The {provider} provider's content policy refused the request or stopped the answer."
    hint = "Retrying the same request will not help."


class Provider(Protocol):
    name: str

    def unsupported(self, request: ChatRequest) -> list[str]:
        """The names in `request.asked()` this provider cannot honour (empty: it can serve it)."""
        ...

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]: ...

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int: ...
