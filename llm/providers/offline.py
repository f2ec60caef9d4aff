"""The offline provider: no key, no network, deterministic. The embedded default and the test double.

Same input, same output and token counts. OFFLINE_PROVIDER_LATENCY_MS adds an artificial delay
so concurrency can be observed. A message containing the marker "[offline:fail]" makes the
call fail after generating half its output (a provider error mid-call, for tests and demos).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from llm.providers import offline_templates
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
        templated = offline_templates.render(request.messages)
        if templated is not None:
            # Keep the template's own whitespace (Mermaid, claims): split into pieces that
            # re-join exactly; each piece counts as one output token.
            pieces = re.findall(r"\S+\s*|\s+", templated)
            count = min(len(pieces), request.max_tokens)
            return pieces[:count], "stop" if count == len(pieces) else "length"
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
            raise ProviderOverloaded("offline provider failed mid-call (requested)", provider=self.name,
                                     tokens_in=tokens_in, tokens_out=len(words) // 2)
        return ChatResult(text=self._join(words), finish_reason=finish, usage=Usage(tokens_in, len(words)),
                          provider_response_id="offline-" + hashlib.sha256(self._join(words).encode()).hexdigest()[:12])

    @staticmethod
    def _templated(request: ChatRequest) -> bool:
        return offline_templates.render(request.messages) is not None

    @staticmethod
    def _join(words: list[str]) -> str:
        # Template pieces carry their own whitespace; plain words are joined with spaces.
        return "".join(words) if any(w[-1:].isspace() for w in words) else " ".join(words)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        words, finish = self._answer(request)
        tokens_in = self.count_tokens(request.messages, request.model)
        fail_at = len(words) // 2 if self._should_fail(request) else None
        templated = self._templated(request)
        step = settings.OFFLINE_PROVIDER_LATENCY_MS / 1000 / max(1, len(words))
        for index, word in enumerate(words):
            if fail_at is not None and index == fail_at:
                raise ProviderOverloaded("offline provider failed mid-stream (requested)", provider=self.name,
                                         tokens_in=tokens_in, tokens_out=index)
            if step:
                await asyncio.sleep(step)
            yield StreamDelta(text=word if index == 0 or templated else " " + word)
        yield StreamDelta(finish_reason=finish, usage=Usage(tokens_in, len(words)))
