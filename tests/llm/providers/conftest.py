"""Each provider class against the loopback fake of its wire protocol, through the real SDK.

A `Kit` pairs a fake with a factory for the provider pointed at it. Tests run their async scenario
with `kit.run(...)` (one `asyncio.run` per scenario: no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from llm.providers.anthropic_provider import AnthropicProvider
from llm.providers.base import ChatRequest, ProviderError, StreamDelta
from llm.providers.gemini import GeminiProvider
from llm.providers.openai_provider import OpenAIProvider
from tests.fakes import FakeAnthropic, FakeGemini, FakeOpenAI, FakeProvider

KEY = "test-key"
KINDS = ("openai", "grok", "gemini", "anthropic")

REQUEST = ChatRequest(
    model="model-1",
    messages=[
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is a patent family?"},
        {"role": "assistant", "content": "Patents that share a priority claim."},
        {"role": "user", "content": [{"type": "text", "text": "And a priority date?"}]},
    ],
    max_tokens=256,
)


@dataclass
class Kit:
    kind: str
    fake: FakeProvider
    factory: Callable[..., Any]

    def provider(self, **overrides: Any) -> Any:
        return self.factory(**overrides)

    def run(self, scenario: Callable[[Any], Awaitable[Any]], **overrides: Any) -> Any:
        """Build the provider, run the scenario in a fresh event loop, close the client."""

        async def main() -> Any:
            provider = self.provider(**overrides)
            try:
                return await scenario(provider)
            finally:
                await provider.aclose()

        return asyncio.run(main())

    def billed_after(self) -> list[tuple[str, int, int]]:
        self.fake.wait_idle()
        return list(self.fake.billed)


def make_kit(kind: str, **fake_options: Any) -> Kit:
    if kind in ("openai", "grok", "openai_compatible"):
        fake: FakeProvider = FakeOpenAI(**fake_options)

        def factory(api_key: str | None = KEY, timeout: float = 5.0) -> OpenAIProvider:
            return OpenAIProvider(kind, api_key, fake.url + "/v1", timeout=timeout)
    elif kind == "gemini":
        fake = FakeGemini(**fake_options)

        def factory(api_key: str | None = KEY, timeout: float = 5.0) -> GeminiProvider:  # type: ignore[misc]
            return GeminiProvider(api_key, fake.url, timeout=timeout)
    elif kind == "anthropic":
        fake = FakeAnthropic(**fake_options)

        def factory(api_key: str | None = KEY, timeout: float = 5.0) -> AnthropicProvider:  # type: ignore[misc]
            return AnthropicProvider(api_key, fake.url, timeout=timeout)
    else:
        raise ValueError(kind)
    return Kit(kind, fake, factory)


@pytest.fixture
def kits() -> Iterator[Callable[..., Kit]]:
    """Make kits with custom fake options; their fakes are closed after the test."""
    made: list[Kit] = []

    def make(kind: str, **fake_options: Any) -> Kit:
        made.append(make_kit(kind, **fake_options))
        return made[-1]

    yield make
    for kit in made:
        kit.fake.close()


@pytest.fixture(params=KINDS)
def kit(request: pytest.FixtureRequest, kits: Callable[..., Kit]) -> Kit:
    return kits(request.param)


async def collect(provider: Any, request: ChatRequest = REQUEST) -> list[StreamDelta]:
    return [delta async for delta in provider.stream(request)]


async def collect_until_error(provider: Any, request: ChatRequest = REQUEST) -> tuple[list[StreamDelta], ProviderError]:
    """The deltas a failing stream yielded before it raised, and the error."""
    deltas: list[StreamDelta] = []
    try:
        async for delta in provider.stream(request):
            deltas.append(delta)
    except ProviderError as exc:
        return deltas, exc
    raise AssertionError(f"the stream did not fail; it yielded {deltas!r}")


async def chat_error(provider: Any, request: ChatRequest = REQUEST) -> ProviderError:
    try:
        result = await provider.chat(request)
    except ProviderError as exc:
        return exc
    raise AssertionError(f"the call did not fail; it returned {result!r}")


def joined(deltas: list[StreamDelta]) -> str:
    return "".join(delta.text for delta in deltas)
