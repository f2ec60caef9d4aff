"""The task pipeline around any adapter: one reservation, limits on steps and API calls, usage in
the ledger matching the calls made, progress events."""

from __future__ import annotations

import json

import pytest

from llm import adapters
from metering.models import UsageLog
from metering.services import meters_reconcile, policy_rule_set

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def sample_adapter(monkeypatch):
    monkeypatch.setitem(adapters._MODULES, "LLM3_DIAGRAM", "tests.llm.adapters.sample_adapter")


def post(persona, body, stream=False):
    return persona.client.post("/api/diagrams/" + ("?stream=1" if stream else ""), body, format="json")


def test_steps_and_calls_are_metered_once_under_one_reservation(tenant_admin):
    r = post(tenant_admin, {"text": "a hinge", "steps": 3, "searches": 2})
    assert r.status_code == 200, r.content
    body = r.json()
    assert len(body["result"]["outputs"]) == 3
    usage = body["usage"]
    assert (usage["llm_steps"], usage["external_calls"], usage["api_calls"]) == (3, 2, 5)
    log = UsageLog.objects.get()
    assert (log.tokens_in, log.tokens_out, log.api_calls, log.cost_micro_usd) == (
        usage["tokens_in"], usage["tokens_out"], 5, usage["cost_micro_usd"])
    assert meters_reconcile() == []


def test_a_step_limit_stops_the_run_with_a_note_not_an_error(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_steps", value=2)
    r = post(tenant_admin, {"text": "a hinge", "steps": 5})
    assert r.status_code == 200
    assert r.json()["usage"]["llm_steps"] == 2
    assert "max_steps" in r.json()["notes"][0]
    assert UsageLog.objects.get().api_calls == 2


def test_api_call_limit_counts_llm_and_external_calls(tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_api_calls", value=3)
    r = post(tenant_admin, {"text": "a hinge", "steps": 1, "searches": 10})
    assert r.status_code == 200
    assert r.json()["usage"]["api_calls"] == 3
    assert "max_api_calls" in r.json()["notes"][0]
    assert UsageLog.objects.get().api_calls == 3
    assert meters_reconcile() == []


def test_progress_events_then_a_result_event(tenant_admin):
    r = post(tenant_admin, {"text": "a hinge", "steps": 2, "searches": 1}, stream=True)
    assert r["Content-Type"] == "text/event-stream"
    raw = b"".join(r).decode()
    events = [block for block in raw.split("\n\n") if block]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names == ["progress", "progress", "progress", "result"]
    result = json.loads(events[-1].split("\n")[1].removeprefix("data: "))
    assert result["usage"]["api_calls"] == 3
    assert UsageLog.objects.get().api_calls == 3


def test_bad_input_is_400_and_charges_nothing(tenant_admin):
    r = post(tenant_admin, {"nope": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    assert not UsageLog.objects.exists()


def test_outsider_without_token_is_401(client, catalog):
    r = client.post("/api/diagrams/", {"text": "x"}, content_type="application/json")
    assert r.status_code == 401
