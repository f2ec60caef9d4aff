"""The offline provider: no key, no network, deterministic. The embedded default and the test double.

Same input, same output and token counts. OFFLINE_PROVIDER_LATENCY_MS adds an artificial delay
so concurrency can be observed. A message containing the marker "[offline:fail]" makes the
call fail after generating half its output (a provider error mid-call, for tests and demos).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from llm.providers.base import ChatRequest, ChatResult, ProviderOverloaded, StreamDelta, Usage
from llm.tokenizer import message_text, messages_tokens

_WORDS = (
    "the gateway measured every token of this offline answer deterministically so tests and demos can rely on "
    "identical output for identical input without any network access or provider key being required at all"
).split()
FAIL_MARKER = "[offline:fail]"


class OfflineProvider:
    name = "offline"

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int:
        return messages_tokens(messages)

    def _answer(self, request: ChatRequest) -> tuple[list[str], str]:
        digest = hashlib.sha256(
            (request.model + "\n" + "\n".join(message_text(m) for m in request.messages)).encode()
        ).digest()
        natural = 12 + digest[0] % 40  # 12..51 words, one token each
        count = min(natural, request.max_tokens)
        start = digest[1] % len(_WORDS)
        words = [_WORDS[(start + i) % len(_WORDS)] for i in range(count)]
        return words, "stop" if count == natural else "length"

    async def _delay(self) -> None:
        if settings.OFFLINE_PROVIDER_LATENCY_MS:
            await asyncio.sleep(settings.OFFLINE_PROVIDER_LATENCY_MS / 1000)

    def _should_fail(self, request: ChatRequest) -> bool:
        return any(FAIL_MARKER in message_text(m) for m in request.messages)

    async def chat(self, request: ChatRequest) -> ChatResult:
        await self._delay()
        words, finish = self._answer(request)
        tokens_in = self.count_tokens(request.messages, request.model)
        if self._should_fail(request):
            raise ProviderOverloaded("offline provider failed mid-call (requested)", tokens_in=tokens_in,
                                     tokens_out=len(words) // 2)
        return ChatResult(text=" ".join(words), finish_reason=finish, usage=Usage(tokens_in, len(words)),
                          provider_response_id="offline-" + hashlib.sha256(" ".join(words).encode()).hexdigest()[:12])

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        words, finish = self._answer(request)
        tokens_in = self.count_tokens(request.messages, request.model)
        fail_at = len(words) // 2 if self._should_fail(request) else None
        step = settings.OFFLINE_PROVIDER_LATENCY_MS / 1000 / max(1, len(words))
        for index, word in enumerate(words):
            if fail_at is not None and index == fail_at:
                raise ProviderOverloaded("offline provider failed mid-stream (requested)", tokens_in=tokens_in,
                                         tokens_out=index)
            if step:
                await asyncio.sleep(step)
            yield StreamDelta(text=word if index == 0 else " " + word)
        yield StreamDelta(finish_reason=finish, usage=Usage(tokens_in, len(words)))
