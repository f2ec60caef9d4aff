"""The provider contract, for every provider class through its real SDK against its protocol fake:
text and usage equal to what the fake billed, stream/non-stream parity, and every fault mapped
onto the typed taxonomy with the right `retryable` and the tokens consumed, the provider's text kept
(scrubbed) as the error's `detail` and never in its `message`."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from llm.providers.base import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderContentFiltered,
    ProviderOverloaded,
    ProviderRateLimited,
    ProviderTimeout,
)
from tests.llm.providers.conftest import REQUEST, chat_error, collect, collect_until_error, joined

MODES = ("chat", "stream")


async def _fail(provider, mode):
    """The error of a call that fails before any text: (deltas yielded, error)."""
    if mode == "chat":
        return [], await chat_error(provider)
    return await collect_until_error(provider)


# ---- success ---------------------------------------------------------------------------------------


def test_chat_returns_the_text_and_the_usage_the_fake_billed(kit):
    result = kit.run(lambda p: p.chat(REQUEST))

    assert kit.billed_after() == [(REQUEST.model, result.usage.tokens_in, result.usage.tokens_out)]
    assert result.usage.estimated is False
    assert result.finish_reason == "stop"
    assert result.text and len(result.text.split()) == result.usage.tokens_out  # the fakes bill words
    assert result.provider_response_id


def test_stream_yields_the_text_then_the_usage_the_fake_billed(kit):
    deltas = kit.run(collect)

    *pieces, final = deltas
    assert len(pieces) > 1 and all(d.text and d.usage is None and d.finish_reason is None for d in pieces)
    assert final.text == "" and final.finish_reason == "stop"
    assert final.usage is not None and final.usage.estimated is False
    assert kit.billed_after() == [(REQUEST.model, final.usage.tokens_in, final.usage.tokens_out)]
    assert len(joined(pieces).split()) == final.usage.tokens_out


@pytest.mark.parametrize(("max_tokens", "finish"), [(256, "stop"), (3, "length")])
def test_stream_and_non_stream_parity(kit, max_tokens, finish):
    request = replace(REQUEST, max_tokens=max_tokens)

    async def both(provider):
        return await provider.chat(request), await collect(provider, request)

    result, deltas = kit.run(both)

    final = deltas[-1]
    assert joined(deltas) == result.text
    assert final.finish_reason == result.finish_reason == finish
    assert (final.usage.tokens_in, final.usage.tokens_out) == (result.usage.tokens_in, result.usage.tokens_out)
    billed = kit.billed_after()
    assert billed[0] == billed[1] == (request.model, result.usage.tokens_in, result.usage.tokens_out)
    if finish == "length":
        assert result.usage.tokens_out == max_tokens


def test_one_provider_serves_several_event_loops(kit):
    """A provider cached for the process keeps working when called from a new event loop
    (async_to_sync, asyncio.run): the SDK clients' pools are bound to one loop each."""
    provider = kit.provider()
    results = [asyncio.run(provider.chat(REQUEST)) for _ in range(2)]
    finals = [asyncio.run(collect(provider))[-1] for _ in range(2)]

    assert len({(r.text, r.usage.tokens_in, r.usage.tokens_out) for r in results}) == 1
    assert [(f.usage.tokens_in, f.usage.tokens_out) for f in finals] == [
        (results[0].usage.tokens_in, results[0].usage.tokens_out)] * 2
    assert len(kit.billed_after()) == 4


def test_a_consumer_that_stops_reading_closes_the_upstream_stream(kit):
    """A client that disconnects: closing the stream early stops the upstream generation."""
    full = kit.run(lambda p: p.chat(REQUEST)).usage.tokens_out
    kit.fake.delay_next(0.5, after_chunks=2)

    async def read_two(provider):
        stream = provider.stream(REQUEST)
        got = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        return got

    got = kit.run(read_two)

    assert len(got) == 2
    billed_out = kit.billed_after()[-1][2]
    assert 2 <= billed_out < full


# ---- refusals: the provider answered with an error before generating anything ---------------------

REFUSALS = [
    pytest.param(429, ProviderRateLimited, True, id="429"),
    pytest.param(500, ProviderOverloaded, True, id="500"),
    pytest.param(502, ProviderOverloaded, True, id="502"),
    pytest.param(503, ProviderOverloaded, True, id="503"),
    pytest.param(529, ProviderOverloaded, True, id="529"),
    pytest.param(504, ProviderTimeout, True, id="504"),
    pytest.param(400, ProviderBadRequest, False, id="400"),
    pytest.param(404, ProviderBadRequest, False, id="404"),
    pytest.param(422, ProviderBadRequest, False, id="422"),
    # Our key was refused: the router may try another candidate (and opens this model's breaker).
    pytest.param(401, ProviderAuthError, True, id="401"),
    pytest.param(403, ProviderAuthError, True, id="403"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("status", "expected", "retryable"), REFUSALS)
def test_error_status_maps_to_the_taxonomy(kit, mode, status, expected, retryable):
    kit.fake.fail_next(status)

    deltas, error = kit.run(lambda p: _fail(p, mode))

    assert type(error) is expected, error
    assert error.retryable is retryable
    assert deltas == []
    assert (error.tokens_in, error.tokens_out) == (0, 0)
    assert str(status) in error.detail and f"fake {kit.fake.name}: error {status}" in error.detail
    assert error.provider == kit.kind and kit.kind in error.message
    assert "fake" not in error.message and str(status) not in error.message and str(error) == error.message
    assert kit.billed_after() == []


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_key_is_an_auth_error(kit, mode):
    deltas, error = kit.run(lambda p: _fail(p, mode), api_key="wrong-key-0123456789")

    assert type(error) is ProviderAuthError and error.retryable is True
    assert "wrong-key-0123456789" not in error.detail  # OpenAI's fake quotes it back, as OpenAI does
    assert kit.billed_after() == []


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_provider_times_out(kit, mode):
    kit.fake.delay_next(1.5)

    deltas, error = kit.run(lambda p: _fail(p, mode), timeout=0.4)

    assert type(error) is ProviderTimeout and error.retryable is True
    assert deltas == []


@pytest.mark.parametrize("mode", MODES)
def test_a_provider_that_is_down_is_a_connection_error_until_it_comes_back(kit, mode):
    async def scenario(provider):
        await provider.chat(REQUEST)  # a pooled keep-alive connection exists
        kit.fake.go_down()
        down = await _fail(provider, mode)
        kit.fake.come_up()
        return down, await provider.chat(REQUEST)

    (deltas, error), after = kit.run(scenario)

    assert type(error) is ProviderConnectionError and error.retryable is True
    assert deltas == [] and (error.tokens_in, error.tokens_out) == (0, 0)
    assert str(kit.fake.port) not in error.message and "127.0.0.1" not in error.message
    assert after.usage.tokens_out > 0
    assert len(kit.billed_after()) == 2


@pytest.mark.parametrize("variant", ["truncated", "missing"])
def test_a_malformed_body_is_a_retryable_provider_fault(kit, variant):
    kit.fake.malformed_next(variant=variant)

    error = kit.run(chat_error)

    assert type(error) is ProviderOverloaded and error.retryable is True
    assert "malformed" in error.detail
    assert kit.billed_after() == []


# ---- failures part-way through a stream: charged for what was consumed -----------------------------


@pytest.mark.parametrize("clean", [False, True], ids=["connection-dropped", "body-ended-early"])
def test_a_stream_cut_midway_raises_with_the_tokens_streamed(kit, clean):
    kit.fake.cut_next(3, clean=clean)

    deltas, error = kit.run(collect_until_error)

    assert type(error) is ProviderConnectionError and error.retryable is True
    assert len(deltas) == 3 and all(d.text for d in deltas)
    [(model, billed_in, billed_out)] = kit.billed_after()
    assert billed_out == 3
    assert error.tokens_out > 0 and error.tokens_out >= billed_out  # counted locally, never under
    assert error.tokens_in > 0
    if kit.kind in ("anthropic", "gemini"):  # they report input before the end of the stream
        assert error.tokens_in == billed_in


def test_a_malformed_stream_event_is_a_provider_fault_with_the_tokens_streamed(kit):
    kit.fake.malformed_next(after_chunks=3)

    deltas, error = kit.run(collect_until_error)

    assert type(error) is ProviderOverloaded and error.retryable is True
    assert len(deltas) == 3
    assert error.tokens_out >= 3 and error.tokens_in > 0


@pytest.mark.parametrize(("status", "expected"), [(503, ProviderOverloaded), (429, ProviderRateLimited)])
def test_an_error_event_midway_maps_by_its_kind(kit, status, expected):
    kit.fake.error_event_next(3, status=status)

    deltas, error = kit.run(collect_until_error)

    assert type(error) is expected and error.retryable is True
    assert len(deltas) == 3
    assert error.tokens_out >= 3 and error.tokens_in > 0


def test_a_stream_that_stalls_times_out_with_the_tokens_streamed(kit):
    kit.fake.delay_next(1.5, after_chunks=3)

    deltas, error = kit.run(collect_until_error, timeout=0.4)

    assert type(error) is ProviderTimeout and error.retryable is True
    assert len(deltas) == 3
    assert error.tokens_out >= 3 and error.tokens_in > 0


# ---- content filter -----------------------------------------------------------------------------------


def test_a_filtered_answer_is_content_filtered_and_charged(kit):
    kit.fake.filter_next()

    error = kit.run(chat_error)

    assert type(error) is ProviderContentFiltered and error.retryable is False
    [(model, billed_in, billed_out)] = kit.billed_after()
    assert (error.tokens_in, error.tokens_out) == (billed_in, billed_out)
    assert billed_out > 0


def test_a_filtered_stream_is_content_filtered_and_charged(kit):
    kit.fake.filter_next()

    deltas, error = kit.run(collect_until_error)

    assert type(error) is ProviderContentFiltered and error.retryable is False
    [(model, billed_in, billed_out)] = kit.billed_after()
    assert len(joined(deltas).split()) == billed_out > 0
    assert (error.tokens_in, error.tokens_out) == (billed_in, billed_out)
