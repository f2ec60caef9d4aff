"""The one async provider interface and the typed error taxonomy every provider maps onto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm.providers.scrub import scrub


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's model name
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Usage:
    tokens_in: int
    tokens_out: int
    estimated: bool = False  # counted by the gateway because the provider reported none


@dataclass
class ChatResult:
    text: str
    finish_reason: str
    usage: Usage
    provider_response_id: str = ""


@dataclass
class StreamDelta:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None  # set on the final chunk when the provider reports usage


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

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]: ...

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int: ...
