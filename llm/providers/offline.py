"""The offline provider: no key, no network, deterministic. The embedded default and the test double.

Same input, same output and token counts. OFFLINE_PROVIDER_LATENCY_MS adds an artificial delay
so concurrency can be observed. A message containing the marker "[offline:fail]" makes the
call fail after generating half its output (a provider error mid-call, for tests and demos).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from llm.providers import offline_templates
from llm.providers.base import (
    ChatRequest,
    ChatResult,
    Choice,
    ProviderOverloaded,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    has_images,
)
from llm.tokenizer import message_text, messages_tokens, text_tokens

_WORDS = (
    "the gateway measured every token of this offline answer deterministically so tests and demos can rely on "
    "identical output for identical input without any network access or provider key being required at all"
).split()
FAIL_MARKER = "[offline:fail]"


def example_value(schema: Any, depth: int = 0) -> Any:
    """A value that fits a JSON schema (enough of it for a demo: types, enums, properties, items)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_value(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: example_value(sub, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        item = example_value(schema.get("items"), depth + 1)
        return [] if item is None else [item]
    return {"string": "offline", "integer": 1, "number": 1, "boolean": True, "null": None}.get(kind, "offline")


class OfflineProvider:
    """Besides text: tool calls (when tool_choice requires one, or is auto and the last message is the
    user's, it calls the named / first tool with arguments built from its schema; after a tool
    result it answers in text), JSON output (json_schema: a value built from the schema;
    json_object: {"answer": text}), stop sequences and n completions, all deterministic. Sampling
    parameters (top_p, seed, penalties) are accepted and change nothing: the output is
    deterministic by design. It cannot see images and has no logprobs: those are refused."""

    name = "offline"

    def unsupported(self, request: ChatRequest) -> list[str]:
        refused = [n for n in request.options.asked() if n in ("logprobs", "top_logprobs")]
        if has_images(request.messages):
            refused.append("image_url content parts")
        return refused

    def _tool_call(self, request: ChatRequest, index: int) -> ToolCall | None:
        options = request.options
        if not options.tools or (options.tool_choice is not None and options.tool_choice.mode == "none"):
            return None
        mode = options.tool_choice.mode if options.tool_choice is not None else "auto"
        if mode == "auto" and request.messages[-1].get("role") != "user":
            return None  # the tool results are in: answer in text
        tool = next((t for t in options.tools if t.name == options.tool_choice.name), options.tools[0]) \
            if mode == "function" else options.tools[0]
        arguments = json.dumps(example_value(tool.parameters) or {}, separators=(",", ":"))
        digest = hashlib.sha256(f"{request.model}\n{index}\n{tool.name}\n{arguments}".encode()).hexdigest()
        return ToolCall(id="call_" + digest[:24], name=tool.name, arguments=arguments)

    def _choice(self, request: ChatRequest, index: int) -> tuple[Choice, int]:
        """Completion `index` of n and its output tokens."""
        call = self._tool_call(request, index)
        if call is not None:
            return Choice(text="", finish_reason="tool_calls", tool_calls=[call]), text_tokens(call.arguments)
        variant = request if index == 0 else ChatRequest(
            model=f"{request.model}#{index}", messages=request.messages, max_tokens=request.max_tokens)
        words, finish = self._answer(variant)
        text = self._join(words)
        fmt = request.options.response_format
        if fmt is not None and fmt.type in ("json_schema", "json_object"):
            value = example_value(fmt.schema) if fmt.type == "json_schema" else {"answer": text}
            text = json.dumps(value, separators=(",", ":"))
            return Choice(text=text, finish_reason="stop"), text_tokens(text)
        for stop in request.options.stop:
            if stop in text:
                text, finish = text[:text.index(stop)], "stop"
                words = text.split()
        return Choice(text=text, finish_reason=finish), len(words)

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
        if request.options.tools or request.options.response_format or request.options.stop \
                or request.options.n > 1:
            return self._chat_with_options(request)
        words, finish = self._answer(request)
        tokens_in = self.count_tokens(request.messages, request.model)
        if self._should_fail(request):
            raise ProviderOverloaded("offline provider failed mid-call (requested)", provider=self.name,
                                     tokens_in=tokens_in, tokens_out=len(words) // 2)
        return ChatResult(text=self._join(words), finish_reason=finish, usage=Usage(tokens_in, len(words)),
                          provider_response_id="offline-" + hashlib.sha256(self._join(words).encode()).hexdigest()[:12])

    def _chat_with_options(self, request: ChatRequest) -> ChatResult:
        tokens_in = self.count_tokens(request.messages, request.model)
        choices, tokens_out = [], 0
        for index in range(request.options.n):
            choice, tokens = self._choice(request, index)
            choices.append(choice)
            tokens_out += tokens
        first = choices[0]
        if self._should_fail(request):
            raise ProviderOverloaded("offline provider failed mid-call (requested)", provider=self.name,
                                     tokens_in=tokens_in, tokens_out=tokens_out // 2)
        return ChatResult(text=first.text, finish_reason=first.finish_reason, usage=Usage(tokens_in, tokens_out),
                          provider_response_id="offline-" + hashlib.sha256(
                              "".join(c.text + "".join(t.arguments for t in c.tool_calls) for c in choices).encode()
                          ).hexdigest()[:12], tool_calls=first.tool_calls, alternatives=choices[1:])

    async def _stream_with_options(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        tokens_in = self.count_tokens(request.messages, request.model)
        choice, tokens_out = self._choice(request, 0)
        if choice.tool_calls:
            call = choice.tool_calls[0]
            yield StreamDelta(tool_calls=[ToolCallDelta(index=0, id=call.id, name=call.name)])
            for start in range(0, len(call.arguments), 8):  # argument fragments, as OpenAI streams them
                yield StreamDelta(tool_calls=[ToolCallDelta(index=0, arguments=call.arguments[start:start + 8])])
        else:
            for piece in re.findall(r"\S+\s*|\s+", choice.text) or [""]:
                if piece:
                    yield StreamDelta(text=piece)
        yield StreamDelta(finish_reason=choice.finish_reason, usage=Usage(tokens_in, tokens_out))

    @staticmethod
    def _templated(request: ChatRequest) -> bool:
        return offline_templates.render(request.messages) is not None

    @staticmethod
    def _join(words: list[str]) -> str:
        # Template pieces carry their own whitespace; plain words are joined with spaces.
        return "".join(words) if any(w[-1:].isspace() for w in words) else " ".join(words)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        if request.options.tools or request.options.response_format or request.options.stop:
            async for delta in self._stream_with_options(request):
                yield delta
            return
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
