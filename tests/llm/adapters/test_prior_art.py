"""Prior-art search end to end: POST /api/prior-art/ on the offline provider against loopback fakes of
the USPTO Open Data Portal, EPO OPS and OpenAlex (real HTTP servers speaking the services' protocols)."""

from __future__ import annotations

import json
import time

import pytest
from django.core.cache import cache

from catalog.models import SearchSourcePrice
from catalog.selectors import catalog_cache_invalidate
from llm.adapters.prior_art import parse_queries, parse_ranking
from llm.providers import offline_templates
from llm.search import epo_ops
from llm.search.common import Hit, dedupe, normalize_title
from llm.search.openalex import abstract_from_inverted_index
from metering.models import Metric, UsageLog, UsageMeter
from metering.services import meters_reconcile, policy_rule_set
from tests.fakes.epo_ops_fake import EpoOpsFake
from tests.fakes.openalex_fake import OpenAlexFake
from tests.fakes.uspto_odp_fake import UsptoOdpFake

pytestmark = pytest.mark.django_db(transaction=True)

DESCRIPTION = (
    "A self-closing door hinge with a magnetorheological damper. A controller sets the coil current of the "
    "damper from a position sensor so that the closing speed of the door is controlled."
)
SOURCES = {"openalex", "uspto_odp", "epo_ops"}


@pytest.fixture
def fakes(settings):
    openalex, patents, ops = OpenAlexFake(), UsptoOdpFake(api_key="odp-secret"), EpoOpsFake("ops-key", "ops-secret")
    settings.OPENALEX_BASE_URL = openalex.url
    settings.OPENALEX_MAILTO = "ops@example.com"
    settings.OPENALEX_API_KEY = ""
    settings.USPTO_ODP_BASE_URL = patents.url
    settings.USPTO_ODP_API_KEY = "odp-secret"
    settings.EPO_OPS_BASE_URL = ops.base_url
    settings.EPO_OPS_KEY, settings.EPO_OPS_SECRET = "ops-key", "ops-secret"
    settings.EPO_OPS_THROTTLE_PAUSE_SECONDS = 0
    settings.SEARCH_TIMEOUT_SECONDS = 5.0
    settings.SEARCH_RETRIES = 1
    settings.SEARCH_BACKOFF_SECONDS = 0
    yield openalex, patents, ops
    openalex.close()
    patents.close()
    ops.close()


def post(persona, body, stream=False):
    return persona.client.post("/api/prior-art/" + ("?stream=1" if stream else ""), body, format="json")


def sent(fakes) -> int:
    return sum(f.request_count for f in fakes)


def assert_ledger_matches(body, fakes):
    """Ledger api_calls = LLM calls + search requests that reached the services; tokens as reported."""
    log = UsageLog.objects.get()
    usage = body["usage"]
    # queries + re-rank, + the features step when it ran (no claims, and an API call left for it)
    steps = 2 + int(body["result"]["claim_chart"]["basis"] == "features"
                    or any("feature list was unusable" in n for n in body["notes"]))
    assert usage["llm_steps"] == steps
    assert usage["external_calls"] == sent(fakes)
    assert log.api_calls == usage["api_calls"] == sent(fakes) + steps
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd) == (
        usage["tokens_in"], usage["tokens_out"], usage["cost_micro_usd"])
    assert log.tokens_in > 0 and log.tokens_out > 0
    assert meters_reconcile() == []
    return log


def test_full_run_ranks_merged_deduplicated_items_from_all_three_sources(tenant_admin, fakes):
    openalex, patents, ops = fakes
    r = post(tenant_admin, {"description": DESCRIPTION, "date_cutoff": "2020-12-31", "max_results": 20})
    assert r.status_code == 200, r.content
    body = r.json()
    result = body["result"]
    assert 2 <= len(result["queries"]) <= 4
    assert len(result["searches"]) == 3 * len(result["queries"])
    assert all(s["status"] == "ok" and s["attempts"] >= 1 for s in result["searches"])
    assert {name: row["status"] for name, row in result["sources"].items()} == dict.fromkeys(SOURCES, "ok")
    items = result["items"]
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    assert {s for i in items for s in i["sources"]} == SOURCES
    for item in items:
        assert item["identifier"] and item["title"] and item["url"].startswith("https://")
        assert isinstance(item["year"], int) and item["year"] <= 2020  # the cut-off was applied by every source
        assert item["date"][:4] == str(item["year"]) and item["found_by"] and not item["cached"]
        assert 0 <= item["relevance_score"] <= 1 and item["rationale"]
    scores = [i["relevance_score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # De-duplicated: by DOI across queries, by normalised title across records (W2005 is W2001's preprint),
    # by publication number across sources (ODP's and OPS's US9000001B2), by DOCDB family (EP3000001A1 and
    # WO2017000001A1 are one family).
    assert len({i["identifier"] for i in items}) == len(items)
    assert len({normalize_title(i["title"]) for i in items}) == len(items)
    by_id = {i["identifier"]: i for i in items}
    assert by_id["10.1000/mrd.2015.001"]["abstract_snippet"].startswith("A compact magnetorheological damper is")
    assert by_id["10.1000/mrd.2015.001"]["url"] == "https://example.org/mrd-2015"
    us = by_id["US9000001B2"]
    assert us["sources"] == ["uspto_odp", "epo_ops"] and us["kind"] == "B2"
    assert us["url"] == "https://patentcenter.uspto.gov/applications/14100001"
    assert us["abstract_snippet"].startswith("A hinge for a door")  # ODP has none: OPS supplied it
    assert us["cpc"] == ["E05F3/14", "F16F9/53"] and us["applicants"] == ["Hinge Works Inc."]
    ep = by_id["EP3000001A1"]
    assert ep["family_id"] == "50001" and ep["applicants"] == ["HINGE WORKS INC"] and ep["cpc"] == ["E05F3/14"]
    assert ep["url"] == "https://worldwide.espacenet.com/patent/search?q=pn%3DEP3000001A1"
    assert "WO2017000001A1" not in by_id  # its family is EP3000001A1
    assert "10.1000/smart.2023.4" not in by_id and "EP3999999A1" not in by_id  # after the cut-off
    assert items[0]["rationale"].startswith("Shares")
    # What went on the wire.
    first = openalex.received[0]
    assert first.path == "/works" and first.params["mailto"] == "ops@example.com"
    assert first.params["filter"] == "to_publication_date:2020-12-31"
    assert first.params["search"] in result["queries"]
    odp = patents.received[0]
    assert odp.headers["x-api-key"] == "odp-secret" and odp.path == "/api/v1/patent/applications/search"
    assert odp.body["rangeFilters"] == [{"field": "applicationMetaData.filingDate", "valueFrom": "1790-01-01",
                                         "valueTo": "2020-12-31"}]
    assert odp.body["pagination"] == {"offset": 0, "limit": int(first.params["per-page"])}  # retrieval_top_k
    assert ops.tokens_issued == 1  # one token for every search of the run
    assert all('pd within "17900101 20201231"' in req.params["q"] for req in ops.searches())
    assert {req.headers["authorization"] for req in ops.searches()} == {"Bearer ops-token-1"}
    assert body["notes"] == []
    assert_ledger_matches(body, fakes)


def test_a_repeat_within_the_ttl_is_served_from_cache_without_requests_or_fees(tenant_admin, outsider, fakes):
    SearchSourcePrice.objects.filter(source="openalex", request_kind="search").update(micro_usd=2_500)
    catalog_cache_invalidate()
    first = post(tenant_admin, {"description": DESCRIPTION}).json()
    requests_first = sent(fakes)
    oa_searches = sum(1 for r in fakes[0].received if r.params.get("search"))
    assert first["usage"]["search_fees_micro_usd"] == 2_500 * oa_searches > 0
    log_first = UsageLog.objects.get()
    assert log_first.cost_micro_usd == first["usage"]["cost_micro_usd"]

    again = post(tenant_admin, {"description": DESCRIPTION}).json()
    assert sent(fakes) == requests_first  # nothing went out
    assert again["usage"]["external_calls"] == 0 and again["usage"]["search_fees_micro_usd"] == 0
    assert again["usage"]["api_calls"] == 3  # the three LLM steps only
    assert {s["status"] for s in again["result"]["searches"]} == {"cached"}
    assert again["result"]["items"] and all(i["cached"] for i in again["result"]["items"])
    assert again["result"]["cached_hits"] == len(again["result"]["items"])
    assert [i["identifier"] for i in again["result"]["items"]] == [i["identifier"] for i in first["result"]["items"]]
    log_again = UsageLog.objects.order_by("-id").first()
    # Same prompts, same tokens: the first call's cost was exactly this one's plus its search fees.
    assert log_first.cost_micro_usd == log_again.cost_micro_usd + first["usage"]["search_fees_micro_usd"]
    assert log_again.api_calls == 3

    # The answers are public bibliographic data: another tenant's identical search reuses them too, and
    # is charged on its own ledger row only.
    theirs = post(outsider, {"description": DESCRIPTION}).json()
    assert sent(fakes) == requests_first and theirs["usage"]["external_calls"] == 0
    assert UsageLog.objects.filter(tenant=outsider.tenant).count() == 1
    assert UsageLog.objects.filter(tenant=tenant_admin.tenant).count() == 2
    mine = tenant_admin.client.get("/api/usage/logs/")
    assert mine.status_code == 200, mine.content
    assert theirs["request_id"] not in json.dumps(mine.json())
    assert meters_reconcile() == []


def test_the_ledger_cost_is_tokens_plus_priced_requests(tenant_admin, fakes, settings):
    settings.PRIOR_ART_CACHE_TTL_SECONDS = 0  # every call searches
    SearchSourcePrice.objects.update(micro_usd=0)
    catalog_cache_invalidate()
    free = post(tenant_admin, {"description": DESCRIPTION}).json()
    assert free["usage"]["search_fees_micro_usd"] == 0
    SearchSourcePrice.objects.filter(source="openalex", request_kind="search").update(micro_usd=1_000)
    SearchSourcePrice.objects.update_or_create(source="epo_ops", request_kind="search", defaults={"micro_usd": 70})
    SearchSourcePrice.objects.update_or_create(source="epo_ops", request_kind="token", defaults={"micro_usd": 5})
    catalog_cache_invalidate()
    for fake in fakes:
        fake.received.clear()
    cache.delete(epo_ops.token_cache_key())
    priced = post(tenant_admin, {"description": DESCRIPTION}).json()
    openalex, patents, ops = fakes
    fees = 1_000 * len(openalex.received) + 70 * len(ops.searches()) + 5 * ops.tokens_issued // 2
    assert ops.tokens_issued == 2  # one per run: the cached token was dropped in between
    assert priced["usage"]["search_fees_micro_usd"] == fees
    logs = list(UsageLog.objects.order_by("id"))
    assert logs[1].cost_micro_usd == logs[0].cost_micro_usd + fees == priced["usage"]["cost_micro_usd"]
    # The ledger keeps the fees apart too (of the cost), and /api/usage/ sums them from the rollup.
    assert (logs[0].search_fees_micro_usd, logs[1].search_fees_micro_usd) == (0, fees)
    days = f"from={logs[0].admitted_at.date()}&to={logs[1].admitted_at.date()}"
    usage = tenant_admin.django_client.get(f"/api/usage/?{days}&group_by=task")
    assert usage.status_code == 200, usage.content
    (row,) = usage.json()["results"]
    assert (row["search_fees_micro_usd"], row["cost_micro_usd"]) == (
        fees, logs[0].cost_micro_usd + logs[1].cost_micro_usd)
    ledger = tenant_admin.django_client.get("/api/usage/logs/").json()["results"]
    assert {r["request_id"]: r["search_fees_micro_usd"] for r in ledger} == {
        free["request_id"]: 0, priced["request_id"]: fees}
    assert logs[1].api_calls == sent(fakes) + 3
    # The cost hold covered max_api_calls requests at the dearest price: nothing was left reserved.
    meter = UsageMeter.objects.filter(tenant=tenant_admin.tenant, metric=Metric.COST).first()
    assert meter is None or meter.reserved == 0
    assert meters_reconcile() == []


def test_the_cost_hold_covers_max_api_calls_at_the_dearest_request_price(tenant_admin, fakes):
    SearchSourcePrice.objects.filter(source="openalex", request_kind="search").update(micro_usd=400_000)
    catalog_cache_invalidate()
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_api_calls", value=20)
    # 20 calls x 0.40 USD is 8 USD: above a 5 USD budget, so the call is refused before anything is sent.
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_cost_per_month_usd", value="5")
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 429, r.content
    assert sent(fakes) == 0
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_api_calls", value=8)  # 3.2 USD fits
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    assert meters_reconcile() == []


def test_claim_chart_maps_each_element_to_references_and_lists_the_uncovered(tenant_admin, fakes):
    claims = ("1. A door hinge comprising: a magnetorheological damper; a coil whose current is set by a "
              "controller; and a solar panel mounted on the roof.\n"
              "2. The door hinge of claim 1, wherein a position sensor measures the door angle.")
    r = post(tenant_admin, {"description": DESCRIPTION, "claims": claims})
    assert r.status_code == 200, r.content
    chart = r.json()["result"]["claim_chart"]
    assert chart["basis"] == "claims" and chart["method"] == "lexical_overlap"
    ids = [e["id"] for e in chart["elements"]]
    assert ids[:4] == ["1a", "1b", "1c", "1d"] and ids[4].startswith("2")
    by_id = {e["id"]: e for e in chart["elements"]}
    assert by_id["1a"]["text"] == "A door hinge"
    assert by_id["1d"]["text"] == "a solar panel mounted on the roof"
    assert chart["uncovered"] == ["1d"] and not by_id["1d"]["covered"] and by_id["1d"]["references"] == []
    assert chart["covered"] == chart["total"] - 1
    items = {i["identifier"]: i for i in r.json()["result"]["items"]}
    damper = by_id["1b"]
    assert damper["covered"] and 1 <= len(damper["references"]) <= 3
    for ref in damper["references"]:
        assert ref["identifier"] in items and ref["rank"] == items[ref["identifier"]]["rank"]
        assert "magnetorheological" in ref["passage"].lower() and "'magnetorheological'" in ref["rationale"]
        assert ref["score"] >= 0.5
    assert all("_text" not in i for i in items.values())


def test_without_claims_the_chart_uses_the_features_the_llm_extracted(tenant_admin, fakes, monkeypatch):
    chart = post(tenant_admin, {"description": DESCRIPTION}).json()["result"]["claim_chart"]
    assert chart["basis"] == "features"
    assert [e["id"] for e in chart["elements"]] == ["F1", "F2"]
    assert chart["elements"][0]["text"].startswith("A self-closing door hinge")
    assert all(e["covered"] for e in chart["elements"]) and chart["uncovered"] == []

    offline_templates._load()
    monkeypatch.setitem(offline_templates.TEMPLATES, "prior_art_features",
                        lambda messages: '["a magnetorheological damper", "a solar roof tile"]')
    body = post(tenant_admin, {"description": DESCRIPTION}).json()
    chart = body["result"]["claim_chart"]
    assert [e["text"] for e in chart["elements"]] == ["a magnetorheological damper", "a solar roof tile"]
    assert chart["uncovered"] == ["F2"]
    monkeypatch.setitem(offline_templates.TEMPLATES, "prior_art_features", lambda messages: "no idea")
    body = post(tenant_admin, {"description": DESCRIPTION}).json()
    assert body["result"]["claim_chart"]["basis"] == "description"
    assert any("feature list was unusable" in n for n in body["notes"])


def test_stopping_at_max_api_calls_returns_partial_items_with_a_note(tenant_admin, fakes):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_api_calls", value=4)
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    # 1 query step + 2 searches + 1 re-rank (kept back) = 4; the other searches were never sent.
    assert sent(fakes) == 2
    statuses = [s["status"] for s in body["result"]["searches"]]
    assert statuses.count("ok") == 2 and statuses.count("skipped") == len(statuses) - 2
    assert body["result"]["items"], "the searches that ran produced candidates"
    assert any("max_api_calls = 4" in note for note in body["notes"])
    assert any("No API call left to extract the disclosure's features" in n for n in body["notes"])
    log = assert_ledger_matches(body, fakes)
    assert log.api_calls == 4


def test_retrieval_top_k_bounds_candidates_and_items(tenant_admin, fakes):
    openalex, patents, ops = fakes
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="retrieval_top_k", value=3)
    r = post(tenant_admin, {"description": DESCRIPTION, "max_results": 10})
    assert r.status_code == 200, r.content
    body = r.json()
    assert len(body["result"]["items"]) == 3
    assert any("retrieval_top_k = 3" in n for n in body["notes"])  # max_results clamped
    assert any("kept the first 3" in n for n in body["notes"])  # more were found than kept
    assert {req.params["per-page"] for req in openalex.received} == {"3"}
    assert {req.body["pagination"]["limit"] for req in patents.received} == {3}
    assert {req.params["Range"] for req in ops.searches()} == {"1-3"}
    rerank_ids = body["result"]["items"]
    assert [i["rank"] for i in rerank_ids] == [1, 2, 3]
    assert_ledger_matches(body, fakes)

    UsageLog.objects.all().delete()
    r = post(tenant_admin, {"description": DESCRIPTION, "max_results": 2})
    assert len(r.json()["result"]["items"]) == 2


def assert_api_call_meter_charged_only(log):
    """The tenant's api_calls quota meter holds the worst case while running, then keeps only what was sent."""
    meter = UsageMeter.objects.get(tenant=log.tenant_id, metric=Metric.API_CALLS, user=None)
    assert (meter.used, meter.reserved) == (log.api_calls, 0)


def test_a_failing_service_gives_a_partial_result_and_charges_only_sent_calls(tenant_admin, fakes):
    openalex, patents, ops = fakes
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_api_calls_per_month", value=1000)
    openalex.fail_next(500, times=50)
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    searches = [s for s in body["result"]["searches"] if s["service"] == "openalex"]
    # First search: the try and one retry (SEARCH_RETRIES=1), both sent; the other queries never sent.
    assert searches[0]["status"] == "failed" and searches[0]["attempts"] == 2
    assert all(s["status"] == "skipped" and s["attempts"] == 0 for s in searches[1:])
    assert openalex.request_count == 2
    items = body["result"]["items"]
    assert items and {i["source"] for i in items} == {"uspto_odp", "epo_ops"}
    assert body["result"]["sources"]["openalex"]["status"] == "failed"
    assert body["result"]["sources"]["uspto_odp"]["status"] == "ok"
    assert any(n.startswith("openalex failed") and "HTTP 500" in n and "not sent" in n for n in body["notes"])
    assert_api_call_meter_charged_only(assert_ledger_matches(body, fakes))


def test_a_transient_error_is_retried_and_each_attempt_counted(tenant_admin, fakes):
    openalex, patents, ops = fakes
    patents.fail_next(429)
    body = post(tenant_admin, {"description": DESCRIPTION}).json()
    pv = [s for s in body["result"]["searches"] if s["service"] == "uspto_odp"]
    assert [s["status"] for s in pv] == ["ok"] * len(pv) and pv[0]["attempts"] == 2
    assert patents.request_count == len(pv) + 1
    assert body["notes"] == []
    assert_ledger_matches(body, fakes)


def test_the_openalex_key_is_sent_but_never_logged(tenant_admin, fakes, settings, caplog):
    openalex, patents, ops = fakes
    settings.OPENALEX_API_KEY = "oa-secret-123"
    with caplog.at_level("INFO", logger="httpx"):
        body = post(tenant_admin, {"description": DESCRIPTION}).json()
    assert {req.params["api_key"] for req in openalex.received} == {"oa-secret-123"}
    assert "api_key=***" in caplog.text and "oa-secret-123" not in caplog.text
    assert_ledger_matches(body, fakes)


def test_a_client_error_is_not_retried(tenant_admin, fakes):
    openalex, patents, ops = fakes
    patents.fail_next(400)
    r = post(tenant_admin, {"description": DESCRIPTION})
    body = r.json()
    assert patents.request_count == 1
    assert [s["status"] for s in body["result"]["searches"] if s["service"] == "uspto_odp"][0] == "failed"
    assert_ledger_matches(body, fakes)


def test_a_slow_service_times_out_into_a_partial_result(tenant_admin, fakes, settings):
    openalex, patents, ops = fakes
    settings.SEARCH_TIMEOUT_SECONDS = 0.5
    patents.delay_next(10.0, times=2)
    started = time.monotonic()
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert time.monotonic() - started < 8  # two 0.5 s timeouts, not two 10 s waits
    assert r.status_code == 200, r.content
    body = r.json()
    assert patents.request_count == 2  # the attempt and its retry, each timed out; nothing more sent
    assert {i["source"] for i in body["result"]["items"]} == {"openalex", "epo_ops"}
    assert any(n.startswith("uspto_odp failed") and "did not answer within 0.5 s" in n for n in body["notes"])
    assert_ledger_matches(body, fakes)


def test_a_service_that_is_down_is_not_charged(tenant_admin, fakes):
    openalex, patents, ops = fakes
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_api_calls_per_month", value=1000)
    openalex.go_down()
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    assert openalex.request_count == 0
    oa = [s for s in body["result"]["searches"] if s["service"] == "openalex"]
    assert oa[0]["status"] == "failed" and oa[0]["attempts"] == 0 and "unreachable" in oa[0]["detail"]
    assert body["usage"]["external_calls"] == patents.request_count + ops.request_count > 0  # refused: not calls
    assert {i["source"] for i in body["result"]["items"]} == {"uspto_odp", "epo_ops"}
    assert_api_call_meter_charged_only(assert_ledger_matches(body, fakes))


def test_patent_sources_are_skipped_without_their_keys(tenant_admin, fakes, settings):
    openalex, patents, ops = fakes
    settings.USPTO_ODP_API_KEY = ""
    settings.EPO_OPS_SECRET = ""
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    assert patents.request_count == ops.request_count == 0
    assert openalex.request_count == len(body["result"]["queries"])
    assert {s["service"] for s in body["result"]["searches"]} == {"openalex"}
    assert {i["source"] for i in body["result"]["items"]} == {"openalex"}
    assert any("USPTO_ODP_API_KEY" in n for n in body["notes"])
    assert any("EPO_OPS_KEY and EPO_OPS_SECRET" in n for n in body["notes"])
    assert_ledger_matches(body, fakes)


def test_non_us_jurisdictions_skip_the_us_patent_search(tenant_admin, fakes):
    openalex, patents, ops = fakes
    r = post(tenant_admin, {"description": DESCRIPTION, "jurisdictions": ["ep", "WO"]})
    body = r.json()
    assert patents.request_count == 0 and openalex.request_count > 0 and ops.searches()
    assert any("uspto_odp was skipped" in n and "leaves out US" in n for n in body["notes"])
    assert all("(pn=EP or pn=WO)" in req.params["q"] for req in ops.searches())
    assert {i["identifier"][:2] for i in body["result"]["items"] if i["source"] == "epo_ops"} <= {"EP", "WO"}
    assert_ledger_matches(body, fakes)


def test_an_unusable_ranking_falls_back_to_lexical_overlap(tenant_admin, fakes, monkeypatch):
    offline_templates._load()
    monkeypatch.setitem(offline_templates.TEMPLATES, "prior_art_rerank", lambda messages: "Sorry, I can't rank.")
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    items = body["result"]["items"]
    assert items and all(i["rationale"].startswith("Ordered by lexical overlap") for i in items)
    scores = [i["relevance_score"] for i in items]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert any("re-ranking was unusable" in n for n in body["notes"])
    assert_ledger_matches(body, fakes)


def test_a_partial_ranking_keeps_the_models_order_then_lexical(tenant_admin, fakes, monkeypatch):
    offline_templates._load()
    answer = 'Here you go:\n```json\n{"ranking": [{"id": "C3", "score": 90, "rationale": "Same damper."}, ' \
             '{"id": "C99", "score": 1, "rationale": "unknown id"}]}\n```'
    monkeypatch.setitem(offline_templates.TEMPLATES, "prior_art_rerank", lambda messages: answer)
    body = post(tenant_admin, {"description": DESCRIPTION}).json()
    items = body["result"]["items"]
    assert items[0]["rationale"] == "Same damper." and items[0]["relevance_score"] == 0.9
    assert all(i["rationale"].startswith("Ordered by lexical") for i in items[1:])
    assert any("ranked 1 of" in n for n in body["notes"])


def test_the_rerank_prompt_shrinks_to_fit_max_tokens_in(tenant_admin, fakes, monkeypatch):
    from llm.tokenizer import text_tokens

    offline_templates._load()
    seen = []
    original = offline_templates.TEMPLATES["prior_art_rerank"]
    monkeypatch.setitem(offline_templates.TEMPLATES, "prior_art_rerank",
                        lambda messages: seen.append(messages) or original(messages))
    post(tenant_admin, {"description": DESCRIPTION})
    roomy = seen[-1][0]["content"] + seen[-1][1]["content"]
    assert "A compact magnetorheological damper" in roomy  # snippets included when there is room
    budget = text_tokens(roomy) * 7 // 10
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_in", value=budget)
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    tight = seen[-1][0]["content"] + seen[-1][1]["content"]
    assert text_tokens(tight) <= budget and "[C1]" in tight and "[C12]" in tight  # shorter snippets, all candidates
    assert r.json()["result"]["items"][0]["rationale"].startswith("Shares")
    assert meters_reconcile() == []


def test_streaming_sends_progress_events_then_the_result(tenant_admin, fakes):
    r = post(tenant_admin, {"description": DESCRIPTION}, stream=True)
    assert r.status_code == 200 and r["Content-Type"] == "text/event-stream"
    raw = b"".join(r).decode()
    blocks = [b for b in raw.split("\n\n") if b]
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names[-1] == "result" and set(names[:-1]) == {"progress"}
    progress = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks[:-1]]
    kinds = [p["event"] for p in progress]
    assert [p["step"] for p in progress if p["event"] == "step"] == ["queries", "rerank", "features"]
    assert kinds.index("queries") < kinds.index("api_call") and kinds[-1] == "step"
    assert kinds.count("api_call") == sent(fakes) == kinds.count("search") + fakes[2].tokens_issued
    result = json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))
    assert result["result"]["items"]
    assert_ledger_matches(result, fakes)


BAD = [
    ({}, "'description'"),
    ({"description": "   "}, "'description'"),
    ({"description": 5}, "must be a string"),
    ({"claims": ["1. A hinge"]}, "must be a string"),
    ({"description": "a hinge", "date_cutoff": "2020-13-01"}, "not a valid date"),
    ({"description": "a hinge", "date_cutoff": "yesterday"}, "YYYY-MM-DD"),
    ({"description": "a hinge", "jurisdictions": "US"}, "jurisdictions"),
    ({"description": "a hinge", "jurisdictions": ["USA"]}, "invalid code"),
    ({"description": "a hinge", "max_results": 0}, "max_results"),
    ({"description": "a hinge", "max_results": True}, "max_results"),
    ({"description": "a hinge", "top_k": 5}, "Unknown field"),
    ([DESCRIPTION], "JSON object"),
    ({"description": "a an the of"}, "no searchable words"),
]


@pytest.mark.parametrize(("payload", "message"), BAD)
def test_bad_input_is_400_and_charges_nothing(tenant_admin, fakes, payload, message):
    r = post(tenant_admin, payload)
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and message in error["message"]
    assert not UsageLog.objects.exists() and sent(fakes) == 0
    assert meters_reconcile() == []


def test_claims_alone_are_accepted(tenant_admin, fakes):
    r = post(tenant_admin, {"claims": "1. A door hinge comprising a magnetorheological damper and a sensor."})
    assert r.status_code == 200, r.content
    assert r.json()["result"]["items"]
    assert_ledger_matches(r.json(), fakes)


def test_member_may_search_and_no_token_is_401(member, fakes, client):
    r = post(member, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    assert_ledger_matches(r.json(), fakes)
    r = client.post("/api/prior-art/", {"description": DESCRIPTION}, content_type="application/json")
    assert r.status_code == 401 and r.json()["error"]["code"]
    assert UsageLog.objects.count() == 1


# ---- units: parsing and normalisation --------------------------------------------------------------

def test_abstract_is_rebuilt_from_the_inverted_index():
    assert abstract_from_inverted_index({"a": [0, 2], "rose": [1, 3], "is": [4]}) == "a rose a rose is"
    assert abstract_from_inverted_index(None) == ""


def test_ranking_parser_is_robust():
    known = {"C1", "C2", "C3"}
    assert parse_ranking('[{"id": "c2", "score": 0.5, "rationale": "x"}]', known) == [("C2", 0.5, "x")]
    truncated = '{"ranking": [{"id": "C1", "score": 0.9, "rationale": "a"}, {"id": "C3", "score": 0.4, "rat'
    assert parse_ranking(truncated, known) == [("C1", 0.9, "a")]
    assert parse_ranking('{"ranking": [{"id": "C1", "score": "high"}, {"id": "C1"}]}', known) == [("C1", None, "")]
    assert parse_ranking("no json here", known) == []
    assert parse_ranking('[{"id": 2, "score": 1}, {"id": "3"}, {"id": "[C1]"}]', known) == [
        ("C2", 1.0, ""), ("C3", None, ""), ("C1", None, "")]
    assert parse_queries('```json\n{"queries": ["a b", "A B", "c d"]}\n```') == ["a b", "c d"]
    assert parse_queries("nothing") == []


def test_dedupe_by_doi_patent_number_and_title():
    hits = [
        Hit("openalex", "10.1/x", "Title One", 2001, "", "u", doi="10.1/x", found_by=["q1"]),
        Hit("openalex", "10.1/x", "Other title", 2001, "", "u", doi="https://doi.org/10.1/X", found_by=["q2"]),
        Hit("openalex", "W9", "Title  one!", 2002, "abs", "u", native_id="W9"),
        Hit("uspto_odp", "US123", "P", 2003, "", "u", patent_number="US 123 B2"),
        Hit("uspto_odp", "US123", "P again", 2003, "", "u", patent_number="123"),
    ]
    kept = dedupe(hits)
    assert [h.identifier for h in kept] == ["10.1/x", "US123"]
    assert kept[0].found_by == ["q1", "q2"] and kept[0].abstract == "abs"
