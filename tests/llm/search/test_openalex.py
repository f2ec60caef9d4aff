"""The OpenAlex client against a loopback fake of its works API: the api_key, Retry-After, bad bodies."""

from __future__ import annotations

import asyncio
import time

import pytest

from llm.search import openalex
from llm.search.common import Attempts, SearchError
from tests.fakes.openalex_fake import OpenAlexFake
from tests.llm.search.conftest import with_client


@pytest.fixture
def oa(settings, fast_search):
    fake = OpenAlexFake(api_key="oa-key")
    settings.OPENALEX_BASE_URL = fake.url
    settings.OPENALEX_API_KEY = "oa-key"
    yield fake
    fake.close()


def search(counter, query="magnetorheological hinge", size=5):
    async def run(client):
        return await openalex.OpenAlexClient(client).search(query, size=size, date_cutoff=None, external=counter,
                                                            attempts=Attempts())
    return asyncio.run(with_client(run))


def test_search_sends_the_key_and_is_priced_as_a_search(oa, counter):
    hits = search(counter)
    assert oa.received[0].params["api_key"] == "oa-key"
    assert hits and hits[0].date and counter.calls == [("openalex", "search")]


def test_a_wrong_key_fails_without_retry(oa, counter, settings):
    settings.OPENALEX_API_KEY = "nope"
    with pytest.raises(SearchError) as error:
        search(counter)
    assert error.value.kind == "http_401" and oa.request_count == 1


def test_429_honours_retry_after(oa, counter, settings):
    settings.SEARCH_BACKOFF_SECONDS = 0
    oa.fail_next(429, headers={"Retry-After": "1"})
    started = time.monotonic()
    assert search(counter)
    assert time.monotonic() - started >= 0.9 and oa.request_count == 2


def test_empty_and_malformed(oa, counter):
    assert search(counter, "zzzz qqqq") == []
    oa.malformed_next()
    with pytest.raises(SearchError) as error:
        search(counter)
    assert error.value.kind == "bad_response"
