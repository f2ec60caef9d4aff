"""Prior-art search end to end: POST /api/prior-art/ on the offline provider against loopback fakes of
OpenAlex and PatentsView (real HTTP servers with the services' response shapes)."""

from __future__ import annotations

import json
import time

import pytest

from llm.adapters.prior_art import parse_queries, parse_ranking
from llm.providers import offline_templates
from llm.search.common import Hit, dedupe, normalize_title
from llm.search.openalex import abstract_from_inverted_index
from metering.models import Metric, UsageLog, UsageMeter
from metering.services import meters_reconcile, policy_rule_set
from tests.fakes.openalex_fake import OpenAlexFake
from tests.fakes.patentsview_fake import PatentsViewFake

pytestmark = pytest.mark.django_db(transaction=True)

DESCRIPTION = (
    "A self-closing door hinge with a magnetorheological damper. A controller sets the coil current of the "
    "damper from a position sensor so that the closing speed of the door is controlled."
)
SOURCES = {"openalex", "patentsview"}


@pytest.fixture
def fakes(settings):
    openalex, patents = OpenAlexFake(), PatentsViewFake(api_key="pv-secret")
    settings.OPENALEX_BASE_URL = openalex.url
    settings.OPENALEX_MAILTO = "ops@example.com"
    settings.OPENALEX_API_KEY = ""
    settings.PATENTSVIEW_BASE_URL = patents.url
    settings.PATENTSVIEW_API_KEY = "pv-secret"
    settings.SEARCH_TIMEOUT_SECONDS = 5.0
    settings.SEARCH_RETRIES = 1
    settings.SEARCH_BACKOFF_SECONDS = 0
    yield openalex, patents
    openalex.close()
    patents.close()


def post(persona, body, stream=False):
    return persona.client.post("/api/prior-art/" + ("?stream=1" if stream else ""), body, format="json")


def sent(fakes) -> int:
    return sum(f.request_count for f in fakes)


def assert_ledger_matches(body, fakes):
    """Ledger api_calls = LLM calls + search requests that reached the services; tokens as reported."""
    log = UsageLog.objects.get()
    usage = body["usage"]
    assert usage["llm_steps"] == 2
    assert usage["external_calls"] == sent(fakes)
    assert log.api_calls == usage["api_calls"] == sent(fakes) + 2
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd) == (
        usage["tokens_in"], usage["tokens_out"], usage["cost_micro_usd"])
    assert log.tokens_in > 0 and log.tokens_out > 0
    assert meters_reconcile() == []
    return log


def test_full_run_ranks_merged_deduplicated_items(tenant_admin, fakes):
    openalex, patents = fakes
    r = post(tenant_admin, {"description": DESCRIPTION, "date_cutoff": "2020-12-31", "max_results": 20})
    assert r.status_code == 200, r.content
    body = r.json()
    result = body["result"]
    assert 2 <= len(result["queries"]) <= 4
    assert len(result["searches"]) == 2 * len(result["queries"])
    assert all(s["status"] == "ok" and s["attempts"] == 1 for s in result["searches"])
    items = result["items"]
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    assert {i["source"] for i in items} == SOURCES
    for item in items:
        assert item["identifier"] and item["title"] and item["url"].startswith("http")
        assert isinstance(item["year"], int) and item["year"] <= 2020  # the cut-off was applied by both services
        assert 0 <= item["relevance_score"] <= 1 and item["rationale"]
    scores = [i["relevance_score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # De-duplicated: by DOI across queries, by normalised title across records (W2005 is W2001's preprint).
    assert len({i["identifier"] for i in items}) == len(items)
    assert len({normalize_title(i["title"]) for i in items}) == len(items)
    by_id = {i["identifier"]: i for i in items}
    assert by_id["10.1000/mrd.2015.001"]["abstract_snippet"].startswith("A compact magnetorheological damper is")
    assert by_id["10.1000/mrd.2015.001"]["url"] == "https://example.org/mrd-2015"
    assert "US9000001" in by_id and by_id["US9000001"]["url"].endswith("/US9000001")
    assert "10.1000/smart.2023.4" not in by_id and "US9000004" not in by_id  # after the cut-off
    assert items[0]["rationale"].startswith("Shares")
    # What went on the wire.
    first = openalex.received[0]
    assert first.path == "/works" and first.params["mailto"] == "ops@example.com"
    assert first.params["filter"] == "to_publication_date:2020-12-31"
    assert first.params["search"] in result["queries"]
    pv = patents.received[0]
    assert pv.headers["x-api-key"] == "pv-secret" and pv.path == "/api/v1/patent/"
    assert {"_lte": {"patent_date": "2020-12-31"}} in pv.body["q"]["_and"]
    assert body["notes"] == []
    assert_ledger_matches(body, fakes)


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
    log = assert_ledger_matches(body, fakes)
    assert log.api_calls == 4


def test_retrieval_top_k_bounds_candidates_and_items(tenant_admin, fakes):
    openalex, patents = fakes
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="retrieval_top_k", value=3)
    r = post(tenant_admin, {"description": DESCRIPTION, "max_results": 10})
    assert r.status_code == 200, r.content
    body = r.json()
    assert len(body["result"]["items"]) == 3
    assert any("retrieval_top_k = 3" in n for n in body["notes"])  # max_results clamped
    assert any("kept the first 3" in n for n in body["notes"])  # more were found than kept
    assert {req.params["per-page"] for req in openalex.received} == {"3"}
    assert {req.body["o"]["size"] for req in patents.received} == {3}
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
    openalex, patents = fakes
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
    assert items and {i["source"] for i in items} == {"patentsview"}
    assert any(n.startswith("openalex failed") and "HTTP 500" in n and "not sent" in n for n in body["notes"])
    assert_api_call_meter_charged_only(assert_ledger_matches(body, fakes))


def test_a_transient_error_is_retried_and_each_attempt_counted(tenant_admin, fakes):
    openalex, patents = fakes
    patents.fail_next(429)
    body = post(tenant_admin, {"description": DESCRIPTION}).json()
    pv = [s for s in body["result"]["searches"] if s["service"] == "patentsview"]
    assert [s["status"] for s in pv] == ["ok"] * len(pv) and pv[0]["attempts"] == 2
    assert patents.request_count == len(pv) + 1
    assert body["notes"] == []
    assert_ledger_matches(body, fakes)


def test_the_openalex_key_is_sent_but_never_logged(tenant_admin, fakes, settings, caplog):
    openalex, patents = fakes
    settings.OPENALEX_API_KEY = "oa-secret-123"
    with caplog.at_level("INFO", logger="httpx"):
        body = post(tenant_admin, {"description": DESCRIPTION}).json()
    assert {req.params["api_key"] for req in openalex.received} == {"oa-secret-123"}
    assert "api_key=***" in caplog.text and "oa-secret-123" not in caplog.text
    assert_ledger_matches(body, fakes)


def test_a_client_error_is_not_retried(tenant_admin, fakes):
    openalex, patents = fakes
    patents.fail_next(400)
    r = post(tenant_admin, {"description": DESCRIPTION})
    body = r.json()
    assert patents.request_count == 1
    assert [s["status"] for s in body["result"]["searches"] if s["service"] == "patentsview"][0] == "failed"
    assert_ledger_matches(body, fakes)


def test_a_slow_service_times_out_into_a_partial_result(tenant_admin, fakes, settings):
    openalex, patents = fakes
    settings.SEARCH_TIMEOUT_SECONDS = 0.5
    patents.delay_next(10.0, times=2)
    started = time.monotonic()
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert time.monotonic() - started < 8  # two 0.5 s timeouts, not two 10 s waits
    assert r.status_code == 200, r.content
    body = r.json()
    assert patents.request_count == 2  # the attempt and its retry, each timed out; nothing more sent
    assert {i["source"] for i in body["result"]["items"]} == {"openalex"}
    assert any(n.startswith("patentsview failed") and "did not answer within 0.5 s" in n for n in body["notes"])
    assert_ledger_matches(body, fakes)


def test_a_service_that_is_down_is_not_charged(tenant_admin, fakes):
    openalex, patents = fakes
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_api_calls_per_month", value=1000)
    openalex.go_down()
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    assert openalex.request_count == 0
    oa = [s for s in body["result"]["searches"] if s["service"] == "openalex"]
    assert oa[0]["status"] == "failed" and oa[0]["attempts"] == 0 and "unreachable" in oa[0]["detail"]
    assert body["usage"]["external_calls"] == patents.request_count > 0  # refused connections are not calls
    assert {i["source"] for i in body["result"]["items"]} == {"patentsview"}
    assert_api_call_meter_charged_only(assert_ledger_matches(body, fakes))


def test_patentsview_is_skipped_without_a_key(tenant_admin, fakes, settings):
    openalex, patents = fakes
    settings.PATENTSVIEW_API_KEY = ""
    r = post(tenant_admin, {"description": DESCRIPTION})
    assert r.status_code == 200, r.content
    body = r.json()
    assert patents.request_count == 0 and openalex.request_count == len(body["result"]["queries"])
    assert {s["service"] for s in body["result"]["searches"]} == {"openalex"}
    assert {i["source"] for i in body["result"]["items"]} == {"openalex"}
    assert any("PATENTSVIEW_API_KEY" in n for n in body["notes"])
    assert_ledger_matches(body, fakes)


def test_non_us_jurisdictions_skip_the_us_patent_search(tenant_admin, fakes):
    openalex, patents = fakes
    r = post(tenant_admin, {"description": DESCRIPTION, "jurisdictions": ["ep", "WO"]})
    body = r.json()
    assert patents.request_count == 0 and openalex.request_count > 0
    assert any("US grants only" in n and "EP, WO" in n for n in body["notes"])
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
    assert [p["step"] for p in progress if p["event"] == "step"] == ["queries", "rerank"]
    assert kinds.index("queries") < kinds.index("api_call") and kinds[-1] == "step"
    assert kinds.count("api_call") == sent(fakes) == kinds.count("search")
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
        Hit("patentsview", "US123", "P", 2003, "", "u", patent_number="US 123 B2"),
        Hit("patentsview", "US123", "P again", 2003, "", "u", patent_number="123"),
    ]
    kept = dedupe(hits)
    assert [h.identifier for h in kept] == ["10.1/x", "US123"]
    assert kept[0].found_by == ["q1", "q2"] and kept[0].abstract == "abs"
