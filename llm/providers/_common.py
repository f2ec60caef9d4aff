"""What the SDK-backed providers share: HTTP status and transport errors onto the taxonomy, and
metering of a stream that fails part-way.

The SDKs do not wrap every failure in their own exception types. Observed with openai 3.57,
anthropic 2.14 and google-genai 3.6.1 (all on httpx2):

* a 200 response whose body is not valid JSON raises the stdlib `json.JSONDecodeError` (a
  `ValueError`) from all three; google-genai raises `errors.UnknownApiResponseError` (a `ValueError`)
  for a bad stream event;
* a body that is valid JSON but lacks required fields is *not* rejected: the SDKs build the
  response object without validation and leave the fields None, so the providers check them;
* anthropic and google-genai let raw `httpx2` errors (`RemoteProtocolError`, `ReadTimeout`) escape
  from a stream that breaks after it started; google-genai also for connect failures and timeouts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import httpx2

from llm.providers.base import (
    ChatRequest,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderOverloaded,
    ProviderRateLimited,
    ProviderTimeout,
)
from llm.tokenizer import text_tokens

try:  # the legacy httpx, if something in the process still routes a client through it
    import httpx as _httpx
except ImportError:  # pragma: no cover
    _httpx = None

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TimeoutException,)
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx2.RequestError,)
if _httpx is not None:
    TIMEOUT_ERRORS += (_httpx.TimeoutException,)
    TRANSPORT_ERRORS += (_httpx.RequestError,)

# Bodies that parsed but not into the fields we need, and JSON that did not parse.
MALFORMED_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, AttributeError, KeyError, IndexError)

ClientT = TypeVar("ClientT")


class PerLoop(Generic[ClientT]):
    """One SDK client per running event loop, closed when that loop shuts down.

    The SDK clients keep an httpx2 connection pool bound to the event loop that first used it; used
    from another loop (async_to_sync in a sync view or test, asyncio.run per test, one loop per
    thread) a shared client fails with "Event loop is closed". So a provider holds one client per
    loop. Each client is closed inside its own loop when the loop runs `shutdown_asyncgens()` (as
    `asyncio.run`, asgiref and uvicorn do): a small async generator parked in the loop closes it.
    """

    def __init__(self, factory: Callable[[], ClientT], close: Callable[[ClientT], Awaitable[None]]) -> None:
        self._factory = factory
        self._close = close
        self._entries: dict[asyncio.AbstractEventLoop, tuple[ClientT, AsyncGenerator[None, None]]] = {}
        self._lock = threading.Lock()

    async def get(self) -> ClientT:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is not None:
            return entry[0]
        client = self._factory()
        closer = self._closer(loop, client)
        with self._lock:
            for stale in [other for other in self._entries if other.is_closed()]:  # loops closed without shutdown
                del self._entries[stale]
            self._entries[loop] = (client, closer)
        await closer.__anext__()  # runs to its `yield` without suspending: no other task can interleave
        return client

    async def _closer(self, loop: asyncio.AbstractEventLoop, client: ClientT) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if loop in self._entries and self._entries[loop][0] is client:
                    del self._entries[loop]
            await self._close(client)

    async def aclose(self) -> None:
        """Close the running loop's client now."""
        with self._lock:
            entry = self._entries.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()


def for_status(provider: str, status: int, detail: str, *, tokens_in: int = 0, tokens_out: int = 0) -> ProviderError:
    """The taxonomy class for an HTTP error status from a provider; its text is kept as the detail."""
    if status in (401, 402, 403):  # bad key, no credit, not allowed: our configuration, not the caller's
        cls: type[ProviderError] = ProviderAuthError
    elif status == 429:
        cls = ProviderRateLimited
    elif status in (408, 504):
        cls = ProviderTimeout
    elif status >= 500:
        cls = ProviderOverloaded
    else:  # 400, 404 (unknown model), 409, 413, 422, ...
        cls = ProviderBadRequest
    return cls(f"HTTP {status}: {detail}", provider=provider, tokens_in=tokens_in, tokens_out=tokens_out)


def for_transport(provider: str, exc: BaseException, *, tokens_in: int = 0,
                  tokens_out: int = 0) -> ProviderError | None:
    """ProviderTimeout / ProviderConnectionError for a network-level failure, else None."""
    if isinstance(exc, TIMEOUT_ERRORS):
        return ProviderTimeout(f"timed out ({type(exc).__name__})", provider=provider, tokens_in=tokens_in,
                               tokens_out=tokens_out)
    if isinstance(exc, TRANSPORT_ERRORS):
        return ProviderConnectionError(f"connection failed ({type(exc).__name__}: {exc})", provider=provider,
                                       tokens_in=tokens_in, tokens_out=tokens_out)
    return None


def connection_failed(provider: str, exc: BaseException, *, tokens_in: int = 0,
                      tokens_out: int = 0) -> ProviderConnectionError:
    """An SDK's connection error, with the transport's own reason (host, port, errno) as the detail."""
    cause = exc.__cause__
    why = f"{type(cause).__name__}: {cause}" if cause is not None else str(getattr(exc, "message", exc))
    return ProviderConnectionError(f"connection failed ({why})", provider=provider, tokens_in=tokens_in,
                                   tokens_out=tokens_out)


def malformed(provider: str, exc: BaseException | str, *, tokens_in: int = 0,
              tokens_out: int = 0) -> ProviderOverloaded:
    """A response we cannot read: treated as a provider fault (retryable on another candidate)."""
    what = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return ProviderOverloaded(f"malformed response ({what})", provider=provider, tokens_in=tokens_in,
                              tokens_out=tokens_out)


class StreamMeter:
    """What a stream has consumed so far, so a stream that fails part-way is still charged.

    Input: what the provider reported (Anthropic's message_start, Gemini's running usage), else
    the local count. Output: the provider's running count where it sends one, else the local count
    of the text received. Nothing is charged when the provider refused the call before streaming began.
    """

    def __init__(self, provider: Any, request: ChatRequest) -> None:
        self._provider = provider
        self._request = request
        self.parts: list[str] = []
        self.started = False  # the provider accepted the call (200 and the body began)
        self.reported_in: int | None = None
        self.reported_out: int | None = None

    def add(self, text: str) -> None:
        self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def consumed(self) -> dict[str, int]:
        if not self.started:
            return {"tokens_in": 0, "tokens_out": 0}
        tokens_in = self.reported_in
        if tokens_in is None:
            tokens_in = self._provider.count_tokens(self._request.messages, self._request.model)
        # The provider's running count (Gemini reports one with every chunk) is what it bills;
        # without one, the local count of the text received.
        tokens_out = self.reported_out if self.reported_out is not None else text_tokens(self.text, self._request.model)
        return {"tokens_in": tokens_in, "tokens_out": tokens_out}
