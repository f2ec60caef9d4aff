"""The one async provider interface and the typed error taxonomy every provider maps onto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


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


class ProviderError(Exception):
    """Base of the taxonomy. `retryable` says whether the router may try the next candidate."""

    kind = "provider_error"
    retryable = False
    status_code = 502

    def __init__(self, message: str, *, tokens_in: int = 0, tokens_out: int = 0) -> None:
        super().__init__(message)
        self.message = message
        # What was consumed before the failure is still charged.
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out


class ProviderAuthError(ProviderError):
    kind = "provider_auth"


class ProviderRateLimited(ProviderError):
    kind = "provider_rate_limited"
    retryable = True
    status_code = 503


class ProviderOverloaded(ProviderError):
    kind = "provider_overloaded"
    retryable = True
    status_code = 503


class ProviderTimeout(ProviderError):
    kind = "provider_timeout"
    retryable = True
    status_code = 504


class ProviderConnectionError(ProviderError):
    kind = "provider_connection"
    retryable = True
    status_code = 503


class ProviderBadRequest(ProviderError):
    kind = "provider_bad_request"
    status_code = 400


class ProviderContentFiltered(ProviderError):
    kind = "provider_content_filtered"
    status_code = 400


class Provider(Protocol):
    name: str

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]: ...

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int: ...
