"""The USPTO Open Data Portal client against a loopback fake of its patent application search."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from llm.search import uspto_odp
from llm.search.common import Attempts, SearchError, normalize_patent_number
from tests.fakes.uspto_odp_fake import UsptoOdpFake
from tests.llm.search.conftest import with_client


@pytest.fixture
def odp(settings, fast_search):
    fake = UsptoOdpFake(api_key="odp-secret")
    settings.USPTO_ODP_BASE_URL = fake.url
    settings.USPTO_ODP_API_KEY = "odp-secret"
    yield fake
    fake.close()


def search(counter, query="door hinge damper", **kwargs):
    async def run(client):
        return await uspto_odp.UsptoOdpClient(client).search(
            query, size=kwargs.pop("size", 10), date_cutoff=kwargs.pop("date_cutoff", None), external=counter,
            attempts=Attempts(), **kwargs)
    return asyncio.run(with_client(run))


def test_search_posts_the_odp_query_and_normalises_records(odp, counter):
    hits = search(counter, date_cutoff=dt.date(2020, 12, 31))
    request = odp.received[0]
    assert request.headers["x-api-key"] == "odp-secret"
    assert request.body["q"] == "door hinge damper"
    assert request.body["filters"] == [{"name": "applicationMetaData.applicationTypeLabelName", "value": ["Utility"]}]
    assert request.body["rangeFilters"][0]["valueTo"] == "2020-12-31"
    by_number = {h.publication_number: h for h in hits}
    granted = by_number["US9000001B2"]  # granted after a pre-grant publication: B2
    assert granted.cpc == ["E05F3/14", "F16F9/53"] and granted.applicants == ["Hinge Works Inc."]
    assert granted.date == "2016-04-05" and granted.native_id == "14100001"
    assert granted.url == "https://patentcenter.uspto.gov/applications/14100001"
    assert "US9000002B1" in by_number  # granted without an earlier publication: B1
    assert counter.calls == [("uspto_odp", "search")]


def test_pagination_and_a_pending_application_is_its_publication(odp, counter, monkeypatch):
    monkeypatch.setattr(uspto_odp, "PAGE_LIMIT", 2)
    hits = search(counter, "magnetorheological damper door", size=5)
    assert [r.body["pagination"] for r in odp.received] == [{"offset": 0, "limit": 2}, {"offset": 2, "limit": 2}]
    assert "US20210300004A1" in {h.publication_number for h in hits}
    assert len(counter.calls) == 2


def test_no_match_is_empty_and_cpc_filters(odp, counter):
    assert search(counter, "quantum teleportation") == []
    hits = search(counter, "door hinge", cpc=["E05F15"])
    assert [h.publication_number for h in hits] == ["US9000003B2"]
    assert "applicationMetaData.cpcClassificationBag:E05F15*" in odp.received[-1].body["q"]


def test_operators_in_free_text_are_escaped():
    assert uspto_odp.escape('hinge (soft-close) "damper": x/y') == 'hinge \\(soft\\-close\\) \\"damper\\"\\: x\\/y'


def test_a_wrong_key_is_not_retried_and_429_is(odp, counter, settings):
    settings.USPTO_ODP_API_KEY = "wrong"
    with pytest.raises(SearchError) as error:
        search(counter)
    assert error.value.kind == "http_403" and odp.request_count == 1
    settings.USPTO_ODP_API_KEY = "odp-secret"
    odp.fail_next(429, headers={"Retry-After": "0"})
    assert search(counter)
    assert odp.request_count == 3


def test_a_malformed_body_is_a_bad_response(odp, counter):
    odp.malformed_next()
    with pytest.raises(SearchError) as error:
        search(counter)
    assert error.value.kind == "bad_response"


def test_publication_numbers_compare_across_offices_forms():
    assert normalize_patent_number("US20090108066A1") == normalize_patent_number("US 2009108066 A1") == "US2009108066"
    assert normalize_patent_number("US9000001B2") == "US9000001"
