"""Gemini specifics: message conversion, thinking tokens, the stream's running usage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm.providers.base import ProviderBadRequest
from llm.providers.gemini import GeminiProvider
from tests.llm.providers.conftest import KEY, REQUEST, chat_error, collect


def test_messages_become_contents_with_a_system_instruction(kits):
    kit = kits("gemini")
    request = replace(REQUEST, temperature=0.5)
    kit.run(lambda p: p.chat(request))

    received = kit.fake.received[-1]
    assert received.path.endswith(f"/models/{REQUEST.model}:generateContent")
    assert received.headers["x-goog-api-key"] == KEY
    body = received.body
    assert body["systemInstruction"]["parts"] == [{"text": "You answer briefly."}]
    assert [(c["role"], c["parts"]) for c in body["contents"]] == [
        ("user", [{"text": "What is a patent family?"}]),
        ("model", [{"text": "Patents that share a priority claim."}]),
        ("user", [{"text": "And a priority date?"}]),
    ]
    assert body["generationConfig"] == {"maxOutputTokens": REQUEST.max_tokens, "temperature": 0.5}


def test_streams_use_server_sent_events(kits):
    kit = kits("gemini")
    kit.run(collect)
    assert kit.fake.received[-1].path.endswith(f"/models/{REQUEST.model}:streamGenerateContent?alt=sse")


def test_thinking_tokens_are_billed_as_output(kits):
    kit = kits("gemini", thoughts_tokens=5)

    async def both(provider):
        return await provider.chat(REQUEST), await collect(provider)

    result, deltas = kit.run(both)

    words = len(result.text.split())
    assert result.usage.tokens_out == words + 5
    assert (deltas[-1].usage.tokens_in, deltas[-1].usage.tokens_out) == (result.usage.tokens_in, words + 5)
    assert kit.billed_after() == [(REQUEST.model, result.usage.tokens_in, words + 5)] * 2


def test_the_running_usage_of_the_last_chunk_is_the_usage_not_a_sum(kits):
    kit = kits("gemini")
    deltas = kit.run(collect)
    # Every chunk reported running totals; summing them would give far more than the words streamed.
    assert deltas[-1].usage.tokens_out == len("".join(d.text for d in deltas).split())


def test_a_request_with_only_a_system_message_is_a_bad_request(kits):
    kit = kits("gemini")
    request = replace(REQUEST, messages=[{"role": "system", "content": "Be brief."}])

    error = kit.run(lambda p: chat_error(p, request))

    assert type(error) is ProviderBadRequest and error.retryable is False
    assert kit.fake.received == []


def test_constructor_needs_a_key():
    with pytest.raises(ValueError, match="API key"):
        GeminiProvider(None, None)
    assert GeminiProvider("k", None).base_url is None  # the SDK's default endpoint
