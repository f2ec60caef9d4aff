"""Anthropic specifics: system hoisting, API version 2026-10-21 (no sampling parameters), the
event stream's usage (input from message_start, cumulative output from message_delta)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm.providers.anthropic_provider import AnthropicProvider
from llm.providers.base import ProviderOverloaded, ProviderRateLimited
from tests.fakes.anthropic_fake import API_VERSION
from tests.llm.providers.conftest import KEY, REQUEST, collect, collect_until_error


def test_system_is_hoisted_and_the_temperature_is_not_sent(kits):
    kit = kits("anthropic")
    request = replace(REQUEST, temperature=0.7)  # API 2026-10-21 rejects temperature with a 400

    result = kit.run(lambda p: p.chat(request))

    assert result.finish_reason == "stop"
    received = kit.fake.received[-1]
    assert received.path == "/v1/messages"
    assert received.headers["anthropic-version"] == API_VERSION
    assert received.headers["authorization"] == f"Bearer {KEY}"
    body = received.body
    assert body["system"] == "You answer briefly."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "And a priority date?"
    assert body["max_tokens"] == REQUEST.max_tokens
    assert not {"temperature", "top_p", "top_k"} & set(body)


def test_stream_usage_is_message_start_input_and_the_last_cumulative_output(kits):
    kit = kits("anthropic")
    deltas = kit.run(collect)
    # message_start said output_tokens=1; message_delta carries the cumulative total, not an increment.
    [(model, billed_in, billed_out)] = kit.billed_after()
    assert (deltas[-1].usage.tokens_in, deltas[-1].usage.tokens_out) == (billed_in, billed_out)


@pytest.mark.parametrize(("error_type", "expected"), [("overloaded_error", ProviderOverloaded),
                                                      ("rate_limit_error", ProviderRateLimited),
                                                      ("api_error", ProviderOverloaded)])
def test_an_error_event_in_a_200_stream_maps_by_its_type(kits, error_type, expected):
    kit = kits("anthropic")
    kit.fake.error_event_next(2, status=529, code=error_type)

    deltas, error = kit.run(collect_until_error)

    assert type(error) is expected and error.retryable is True
    assert len(deltas) == 2
    [(model, billed_in, billed_out)] = kit.billed_after()
    assert error.tokens_in == billed_in and error.tokens_out >= billed_out == 2


def test_constructor_needs_a_key():
    with pytest.raises(ValueError, match="API key"):
        AnthropicProvider(None, None)  # no fallback to ANTHROPIC_API_KEY or profile files
    assert AnthropicProvider("k", None).base_url == "https://api.anthropic.com"
