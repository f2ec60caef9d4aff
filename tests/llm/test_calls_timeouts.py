"""Attempt timeouts in `llm/calls.py`: a provider that hangs (before answering, or mid-stream) is a
retryable `provider_timeout` — the next candidate gets the call while nothing reached the client —
and the hung provider call is cancelled, not left running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catalog.selectors import ModelInfo
from llm import calls
from llm.providers.base import ChatRequest, ChatResult, StreamDelta, Usage


def model(name: str) -> ModelInfo:
    return ModelInfo(id=1, provider="fake", model_name=name, model_class="PRO_M", class_rank=1, input_price=1,
                     output_price=1, context_window=8000, max_output_tokens=1000, priority=0)


class Fake:
    def __init__(self, *, hang_before: bool = False, hang_after: int | None = None) -> None:
        self.hang_before, self.hang_after = hang_before, hang_after
        self.cancelled = False

    def count_tokens(self, messages, model_name) -> int:
        return 5

    async def _hang(self) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def chat(self, request: ChatRequest) -> ChatResult:
        if self.hang_before:
            await self._hang()
        return ChatResult(text="ok", finish_reason="stop", usage=Usage(5, 1))

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        for index in range(3):
            if self.hang_after is not None and index == self.hang_after:
                await self._hang()
            yield StreamDelta(text=f"w{index} ")
        yield StreamDelta(finish_reason="stop", usage=Usage(5, 3))


@pytest.fixture
def quick(settings):
    settings.ROUTER_ATTEMPT_TIMEOUT_SECONDS = 0.2
    settings.ROUTER_BACKOFF_BASE_SECONDS = 0
    settings.ROUTER_STATE_TTL_SECONDS = 0


@pytest.mark.django_db
def test_a_hung_chat_times_out_and_falls_back(quick):
    hung, good = Fake(hang_before=True), Fake()
    spend = calls.Spend()

    result = asyncio.run(calls.chat_with_fallback([(model("a"), hung), (model("b"), good)], [], 10, None, spend,
                                                  "LLM2_DRAFT"))

    assert result.text == "ok"
    assert [a.error for a in spend.attempts] == ["provider_timeout", ""]
    assert hung.cancelled


@pytest.mark.django_db
def test_a_stream_that_stalls_before_sending_falls_back_and_mid_stream_fails(quick):
    async def collect(candidates, spend) -> list[str]:
        state = calls.StreamState()
        return [piece async for piece in calls.stream_with_fallback(candidates, [], 10, None, spend, state,
                                                                     "LLM2_DRAFT")]

    stalled, good = Fake(hang_after=0), Fake()
    spend = calls.Spend()
    assert asyncio.run(collect([(model("a"), stalled), (model("b"), good)], spend)) == ["w0 ", "w1 ", "w2 "]
    assert [a.error for a in spend.attempts] == ["provider_timeout", ""] and stalled.cancelled

    stalls_later, spend = Fake(hang_after=2), calls.Spend()
    pieces: list[str] = []

    async def partial() -> None:
        state = calls.StreamState()
        async for piece in calls.stream_with_fallback([(model("a"), stalls_later), (model("b"), Fake())], [], 10,
                                                      None, spend, state, "LLM2_DRAFT"):
            pieces.append(piece)

    with pytest.raises(calls.AllCandidatesFailed) as failed:
        asyncio.run(partial())
    assert failed.value.last.kind == "provider_timeout"
    assert pieces == ["w0 ", "w1 "]  # no retry once the client has text
    assert stalls_later.cancelled
