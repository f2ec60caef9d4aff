"""OpenAI-family specifics: OpenAI, xAI Grok and OpenAI-compatible local servers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm.providers.base import ProviderBadRequest, ProviderContentFiltered
from llm.providers.openai_provider import OpenAIProvider
from tests.llm.providers.conftest import REQUEST, chat_error, collect, joined


@pytest.mark.parametrize(("kind", "param"), [("openai", "max_completion_tokens"), ("grok", "max_tokens"),
                                             ("openai_compatible", "max_tokens")])
def test_request_carries_the_messages_the_limit_and_the_temperature(kits, kind, param):
    kit = kits(kind)
    request = replace(REQUEST, temperature=0.25)
    kit.run(lambda p: p.chat(request))

    body = kit.fake.received[-1].body
    assert kit.fake.received[-1].path == "/v1/chat/completions"
    assert body["model"] == REQUEST.model and body["messages"] == REQUEST.messages
    assert body[param] == REQUEST.max_tokens
    other = ({"max_tokens", "max_completion_tokens"} - {param}).pop()
    assert other not in body
    assert body["temperature"] == 0.25
    assert kit.fake.received[-1].headers["authorization"] == "Bearer test-key"


def test_without_a_temperature_none_is_sent(kits):
    kit = kits("openai")
    kit.run(lambda p: p.chat(REQUEST))
    assert "temperature" not in kit.fake.received[-1].body


@pytest.mark.parametrize("kind", ["openai", "grok", "openai_compatible"])
def test_every_stream_asks_for_usage(kits, kind):
    kit = kits(kind)
    kit.run(collect)
    body = kit.fake.received[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_a_compatible_server_that_ignores_include_usage_ends_with_usage_none(kits):
    kit = kits("openai_compatible", api_key=None, include_usage_supported=False)

    async def both(provider):
        return await provider.chat(REQUEST), await collect(provider)

    result, deltas = kit.run(both, api_key=None)

    final = deltas[-1]
    assert final.finish_reason == "stop" and final.usage is None  # the gateway counts the tokens
    assert joined(deltas) == result.text
    assert kit.fake.received[-1].headers["authorization"] == "Bearer not-needed"
    billed = kit.billed_after()
    assert billed[0] == (REQUEST.model, result.usage.tokens_in, result.usage.tokens_out)
    assert billed[1] == billed[0]  # the server billed the stream although it did not report it


def test_a_compatible_server_without_usage_in_its_answer_is_counted_locally_and_flagged(kits):
    kit = kits("openai_compatible", api_key=None, usage_in_body=False)

    result = kit.run(lambda p: p.chat(REQUEST), api_key=None)

    assert result.usage.estimated is True
    assert result.usage.tokens_out >= len(result.text.split()) > 0
    assert result.usage.tokens_in >= kit.billed_after()[0][1] > 0  # the local count errs high


def test_grok_reasoning_tokens_reported_beside_completion_tokens_are_output(kits):
    kit = kits("grok", reasoning_tokens=7)

    async def both(provider):
        return await provider.chat(REQUEST), await collect(provider)

    result, deltas = kit.run(both)

    words = len(result.text.split())
    assert result.usage.tokens_out == words + 7
    assert (deltas[-1].usage.tokens_in, deltas[-1].usage.tokens_out) == (result.usage.tokens_in, words + 7)
    assert kit.billed_after() == [(REQUEST.model, result.usage.tokens_in, words + 7)] * 2


@pytest.mark.parametrize("code", ["content_policy_violation", "content_filter", "invalid_prompt"])
def test_a_content_policy_400_is_content_filtered(kits, code):
    kit = kits("openai")
    kit.fake.fail_next(400, code=code)

    error = kit.run(chat_error)

    assert type(error) is ProviderContentFiltered and error.retryable is False


def test_an_ordinary_400_is_a_bad_request(kits):
    kit = kits("openai")
    kit.fake.fail_next(400, code="invalid_value")
    assert type(kit.run(chat_error)) is ProviderBadRequest


def test_constructor_defaults_and_refusals():
    assert OpenAIProvider("grok", "k", None).base_url == "https://api.x.ai/v1"
    assert OpenAIProvider("openai", "k", None).base_url == "https://api.openai.com/v1"
    assert OpenAIProvider("openai", "k", "http://proxy.local/v1").base_url == "http://proxy.local/v1"
    assert OpenAIProvider("openai_compatible", None, "http://127.0.0.1:11434/v1").name == "openai_compatible"
    with pytest.raises(ValueError, match="base URL"):
        OpenAIProvider("openai_compatible", None, None)
    with pytest.raises(ValueError, match="API key"):
        OpenAIProvider("grok", None, None)  # never falls back to OPENAI_API_KEY
    with pytest.raises(ValueError):
        OpenAIProvider("gemini", "k", None)
