"""The EPO OPS client against a loopback fake of OPS 3.2: the OAuth token shared through the cache,
one refresh on an expired token, fair-use throttling and quota refusals, pagination, empty results."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from django.core.cache import cache

from llm.search import epo_ops
from llm.search.common import Attempts, SearchError
from tests.fakes.epo_ops_fake import EpoOpsFake
from tests.llm.search.conftest import with_client


@pytest.fixture
def ops(settings, fast_search):
    fake = EpoOpsFake("ops-key", "ops-secret")
    settings.EPO_OPS_BASE_URL = fake.base_url
    settings.EPO_OPS_KEY, settings.EPO_OPS_SECRET = "ops-key", "ops-secret"
    yield fake
    fake.close()


def search(counter, query="door hinge magnetorheological", **kwargs):
    async def run(client):
        return await epo_ops.EpoOpsClient(client).search(
            query, size=kwargs.pop("size", 10), date_cutoff=kwargs.pop("date_cutoff", None), external=counter,
            attempts=Attempts(), **kwargs)
    return asyncio.run(with_client(run))


def test_search_fetches_biblio_and_abstracts_with_one_shared_token(ops, counter):
    hits = search(counter)
    assert [h.publication_number for h in hits] == ["EP3000001A1", "WO2017000001A1", "US9000001B2", "CN106000001A"]
    ep = hits[0]
    assert ep.title == "Door hinge with magnetorheological damping unit"  # English title first
    assert ep.abstract.startswith("A door hinge has a magnetorheological damper")
    assert (ep.date, ep.kind, ep.family_id, ep.cpc) == ("2017-03-01", "A1", "50001", ["E05F3/14"])
    assert ep.applicants == ["HINGE WORKS INC"]  # the epodoc spelling, once
    assert hits[2].patent_number == "US9000001"
    assert counter.calls == [("epo_ops", "token"), ("epo_ops", "search")]
    token_request = ops.received[0]
    assert token_request.path == "/3.2/auth/accesstoken" and token_request.body == b"grant_type=client_credentials"
    # A second client (another process) uses the cached token: no second token request.
    search(counter)
    assert ops.tokens_issued == 1 and counter.calls[-1] == ("epo_ops", "search")
    assert cache.get(epo_ops.token_cache_key()) == "ops-token-1"


def test_cql_carries_dates_offices_and_cpc(ops, counter):
    hits = search(counter, "magnetorheological damper", date_cutoff=dt.date(2016, 12, 31), jurisdictions=["US", "CN"],
                  cpc=["E05F3/14"])
    q = ops.searches()[0].params["q"]
    assert q == 'ta=magnetorheological and ta=damper and pd within "17900101 20161231" and (pn=US or pn=CN) ' \
                "and (cpc=E05F3/14)"
    assert [h.publication_number for h in hits] == ["US9000001B2"]


def test_an_expired_token_is_refreshed_once(ops, counter):
    search(counter)
    ops.expire_tokens()
    hits = search(counter)
    assert hits and ops.tokens_issued == 2
    assert [k for _, k in counter.calls] == ["token", "search", "search", "token", "search"]
    assert cache.get(epo_ops.token_cache_key()) == "ops-token-2"


def test_a_401_also_refreshes_and_a_second_refusal_is_an_error(settings, fast_search, counter):
    fake = EpoOpsFake("ops-key", "ops-secret", expired_status=401)
    settings.EPO_OPS_BASE_URL = fake.base_url
    settings.EPO_OPS_KEY, settings.EPO_OPS_SECRET = "ops-key", "ops-secret"
    try:
        cache.set(epo_ops.token_cache_key(), "stale-token")
        assert search(counter)  # stale -> 401 -> one refresh -> served
        assert fake.tokens_issued == 1
        settings.EPO_OPS_SECRET = "wrong"
        cache.set(epo_ops.token_cache_key(), "stale-token")
        with pytest.raises(SearchError) as error:
            search(counter)
        assert error.value.kind == "bad_credentials" and "wrong" not in str(error.value)
    finally:
        fake.close()


def test_a_quota_refusal_parks_the_source_without_further_requests(ops, counter):
    ops.quota_exceeded_next()
    with pytest.raises(SearchError) as error:
        search(counter)
    assert error.value.kind == "quota" and "IndividualQuotaPerHour" in str(error.value)
    sent = ops.request_count
    with pytest.raises(SearchError) as parked:
        search(counter)
    assert parked.value.kind == "throttled" and not parked.value.sent
    assert ops.request_count == sent  # parked for Retry-After (120 s): nothing sent, nothing charged
    assert cache.get(epo_ops.block_cache_key())["until"] > 0


def test_a_black_search_service_parks_it_and_yellow_pauses(ops, counter, settings):
    settings.EPO_OPS_THROTTLE_PAUSE_SECONDS = 0.01
    ops.throttle = "busy (images=green:100, inpadoc=green:45, other=green:1000, retrieval=green:100, search=yellow:5)"

    async def twice(client):
        c = epo_ops.EpoOpsClient(client)
        await c.search("door hinge", size=2, date_cutoff=None, external=counter, attempts=Attempts())
        assert c.throttle.colour == "yellow" and c.throttle.per_minute == 5 and c.pause == 0.01
        assert "x-individualquotaperhour-used" in c.quota_used
        ops.throttle = "overloaded (images=black:0, inpadoc=red:1, other=red:10, retrieval=black:0, search=black:0)"
        await c.search("door hinge", size=2, date_cutoff=None, external=counter, attempts=Attempts())
        assert c.throttle.colour == "black"
        sent = ops.request_count
        with pytest.raises(SearchError) as parked:
            await c.search("door hinge", size=2, date_cutoff=None, external=counter, attempts=Attempts())
        assert parked.value.kind == "throttled" and ops.request_count == sent

    asyncio.run(with_client(twice))


def test_pagination_uses_ranges_and_stops_at_the_total(ops, counter, monkeypatch):
    monkeypatch.setattr(epo_ops, "PAGE_LIMIT", 2)
    hits = search(counter, size=10)
    assert [r.params["Range"] for r in ops.searches()] == ["1-2", "3-4"]
    assert len(hits) == 4  # total-result-count 4: no third page asked for
    single = search(counter, "battery cooling")  # one document: OPS sends an object, not a list
    assert [h.publication_number for h in single] == ["JP2015000001A"]


def test_no_match_is_an_empty_result_and_5xx_is_retried(ops, counter):
    assert search(counter, "quantum teleportation") == []
    ops.fail_next(503)
    assert search(counter)
    assert [k for _, k in counter.calls][-2:] == ["search", "search"]


def test_a_malformed_body_is_a_bad_response(ops, counter):
    search(counter)  # token first
    ops.malformed_next()
    with pytest.raises(SearchError) as error:
        search(counter)
    assert error.value.kind == "bad_response"


def test_throttling_header_parser():
    parsed = epo_ops.parse_throttling("busy (images=green:200, search=red:3)")
    assert (parsed.state, parsed.colour, parsed.per_minute) == ("busy", "red", 3)
    assert epo_ops.parse_throttling(None) is None


def test_concurrent_searches_fetch_one_token(ops, counter):
    async def both(client):
        first, second = epo_ops.EpoOpsClient(client), epo_ops.EpoOpsClient(client)
        return await asyncio.gather(*(c.search("door hinge", size=2, date_cutoff=None, external=counter,
                                               attempts=Attempts()) for c in (first, second)))

    results = asyncio.run(with_client(both))
    assert all(results) and ops.tokens_issued == 1  # the second waited for the first one's token
    assert {r.headers["authorization"] for r in ops.searches()} == {"Bearer ops-token-1"}
