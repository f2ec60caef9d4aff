"""Patent drafting through POST /api/drafting/ on the offline provider: every section an agent
step under one reservation, the claim checks and their repair step, the agent_max_steps bound."""

from __future__ import annotations

import json

import pytest

from llm.adapters.claims import claims_check, claims_parse, failed
from llm.adapters.drafting import SECTIONS
from metering.models import UsageLog, UsageReservation
from metering.services import meters_reconcile, policy_rule_set
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

DISCLOSURE = ("A door hinge with a magnetorheological damper. A sensor measures the closing speed and a controller "
              "stiffens the fluid when the door closes too fast, so the door never slams.")


def post(persona, body, stream=False):
    return persona.client.post("/api/drafting/" + ("?stream=1" if stream else ""), body, format="json")


def assert_ledger_matches(body, steps):
    """One ledger row for the run; its API calls are the LLM attempts made, tokens as reported."""
    usage = body["usage"]
    assert usage["llm_steps"] == steps
    log = UsageLog.objects.get()
    assert log.api_calls == steps == usage["api_calls"]
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd) == (
        usage["tokens_in"], usage["tokens_out"], usage["cost_micro_usd"])
    assert log.tokens_out > 0 and log.cost_micro_usd > 0
    assert UsageReservation.objects.get().status == UsageReservation.Status.COMPLETED
    assert meters_reconcile() == []


def test_full_draft_has_every_section_valid_claims_and_markdown(tenant_admin):
    r = post(tenant_admin, {"disclosure": DISCLOSURE, "prior_art": ["US 9,000,001 B2 — a passive hydraulic door "
                                                                   "closer", {"identifier": "EP 1 234 567 A1",
                                                                              "title": "Spring hinge"}],
                            "claim_style": "apparatus", "jurisdiction": "US"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["task"] == "LLM2_DRAFT"
    result = body["result"]
    assert list(result["sections"]) == list(SECTIONS)
    assert all(text.strip() for text in result["sections"].values())
    assert result["sections"]["title"].startswith("System and Method for Door Hinge")
    assert "passive hydraulic door closer" in result["sections"]["background"]  # the prior art is distinguished
    claims = result["claims"]
    assert [c["number"] for c in claims] == list(range(1, len(claims) + 1)) and len(claims) >= 3
    assert claims[0]["depends_on"] == [] and claims[0]["text"].startswith("An apparatus for")
    assert all(d < c["number"] for c in claims for d in c["depends_on"])
    assert result["checks"]["passed"] is True and result["checks"]["repaired"] is False
    assert all(v == [] for v in result["checks"]["results"].values())
    assert result["checks"]["abstract_words"] <= 150
    md = result["markdown"]
    assert md.startswith("# " + result["sections"]["title"])
    for heading in ("## Technical Field", "## Background", "## Summary", "## Brief Description of the Drawings",
                    "## Detailed Description", "## Claims", "## Abstract"):
        assert heading in md
    assert "\n1. An apparatus for" in md and "\n2. The apparatus of claim 1" in md
    assert body["notes"] == []
    assert_ledger_matches(body, steps=len(SECTIONS))


def test_ep_method_claims_use_ep_references(tenant_admin):
    r = post(tenant_admin, {"disclosure": DISCLOSURE, "claim_style": "method", "jurisdiction": "EP",
                            "sections": ["claims", "title"]})
    assert r.status_code == 200, r.content
    result = r.json()["result"]
    assert list(result["sections"]) == ["title", "claims"]  # document order
    assert result["claims"][0]["text"].startswith("A method of operating")
    assert "according to claim 1" in result["claims"][1]["text"]
    assert result["checks"]["results"]["abstract_length"] is None  # no abstract asked for
    assert result["checks"]["passed"] is True
    assert_ledger_matches(r.json(), steps=2)


def test_broken_claims_get_one_repair_step(tenant_admin):
    r = post(tenant_admin, {"disclosure": DISCLOSURE + " [offline:broken]", "sections": ["claims", "abstract"]})
    assert r.status_code == 200, r.content
    body = r.json()
    result = body["result"]
    assert result["checks"]["repaired"] is True and result["checks"]["passed"] is True
    assert [c["number"] for c in result["claims"]] == [1, 2, 3, 4, 5, 6]
    assert failed(claims_check(claims_parse(result["sections"]["claims"]))) == {}
    assert body["notes"] == []
    assert_ledger_matches(body, steps=3)  # claims, abstract, repair


def test_long_abstract_is_repaired(tenant_admin):
    r = post(tenant_admin, {"disclosure": DISCLOSURE + " [offline:long-abstract]", "sections": ["abstract"]})
    assert r.status_code == 200, r.content
    result = r.json()["result"]
    assert result["checks"]["repaired"] is True and result["checks"]["passed"] is True
    assert result["checks"]["abstract_words"] <= 150
    assert_ledger_matches(r.json(), steps=2)


def test_no_step_left_for_the_repair_returns_the_failed_checks_in_a_note(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="agent_max_steps", value=2)
    r = post(tenant_admin, {"disclosure": DISCLOSURE + " [offline:broken]", "sections": ["claims", "abstract"]})
    assert r.status_code == 200, r.content
    body = r.json()
    checks = body["result"]["checks"]
    assert checks["passed"] is False and checks["repaired"] is False
    assert checks["results"]["claims_numbered"] == ["claim 2 is followed by claim 4"]
    assert checks["results"]["dependencies_valid"] == ["claim 2 refers to claim 5, which is not an earlier claim"]
    assert len(body["notes"]) == 1
    assert "agent_max_steps = 2" in body["notes"][0] and "claim 2 is followed by claim 4" in body["notes"][0]
    assert_ledger_matches(body, steps=2)


def test_stopping_at_agent_max_steps_returns_the_sections_done_so_far(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="agent_max_steps", value=3)
    r = post(tenant_admin, {"disclosure": DISCLOSURE})
    assert r.status_code == 200, r.content
    body = r.json()
    result = body["result"]
    assert list(result["sections"]) == ["title", "technical_field", "background"]
    assert result["sections_missing"] == ["summary", "brief_description_of_drawings", "detailed_description",
                                          "claims", "abstract"]
    assert result["claims"] == []
    assert result["markdown"].startswith("# System and Method") and "## Background" in result["markdown"]
    assert "## Summary" not in result["markdown"]
    assert len(body["notes"]) == 1 and "agent_max_steps = 3" in body["notes"][0]
    assert "not drafted: summary" in body["notes"][0]
    assert_ledger_matches(body, steps=3)


def test_progress_events_one_per_step_then_the_result(tenant_admin):
    r = post(tenant_admin, {"disclosure": DISCLOSURE, "sections": ["title", "claims", "abstract"]}, stream=True)
    assert r.status_code == 200 and r["Content-Type"] == "text/event-stream"
    events = [block for block in b"".join(r).decode().split("\n\n") if block]
    parsed = [(e.split("\n")[0].removeprefix("event: "), json.loads(e.split("\n")[1].removeprefix("data: ")))
              for e in events]
    assert [name for name, _ in parsed] == ["progress", "progress", "progress", "result"]
    assert [d["step"] for _, d in parsed[:3]] == ["section:title", "section:claims", "section:abstract"]
    result = parsed[-1][1]
    assert result["status"] == 200 and result["result"]["checks"]["passed"] is True
    assert result["usage"]["api_calls"] == 3
    assert UsageLog.objects.get().api_calls == 3
    assert meters_reconcile() == []


@pytest.mark.parametrize("body", [
    {},
    {"disclosure": "  "},
    {"disclosure": "x", "sections": ["title", "claimz"]},
    {"disclosure": "x", "jurisdiction": "JP"},
    {"disclosure": "x", "claim_style": "poem"},
    {"disclosure": "x", "prior_art": "not a list"},
])
def test_bad_input_is_400_and_charges_nothing(tenant_admin, body):
    assert_error(post(tenant_admin, body), 400, "invalid_input")
    assert not UsageLog.objects.exists()


def test_input_over_max_tokens_in_is_refused_before_any_step(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_in", value=50)
    r = post(tenant_admin, {"disclosure": DISCLOSURE * 10})
    assert_error(r, 413, "input_too_large")
    assert not UsageLog.objects.filter(api_calls__gt=0).exists()
    assert meters_reconcile() == []


def test_max_tokens_out_bounds_each_step(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out", value=5)
    r = post(tenant_admin, {"disclosure": DISCLOSURE, "sections": ["background", "detailed_description"]})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["usage"]["tokens_out"] <= 2 * 5
    assert all(len(t.split()) <= 5 for t in body["result"]["sections"].values())
    assert_ledger_matches(body, steps=2)
