"""Tenant admins' ledger over the API: /api/usage/logs/ filters and the CSV export /api/usage/export.csv.

Admins see their tenant, members themselves, an outsider nothing of either; filters only narrow that."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import Persona, assert_error
from tests.metering.test_apis import chat

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def calls(tenant_admin, member, outsider) -> dict[str, list[str]]:
    """Request ids by who made them: two admin calls, two member calls plus a refused one, one outsider call."""
    made: dict[str, list[str]] = {"admin": [], "member": [], "outsider": []}
    for who, persona, task, model in [("admin", tenant_admin, "LLM2_DRAFT", "auto"),
                                      ("admin", tenant_admin, "LLM2_DRAFT", "PRO_L"),
                                      ("member", member, "LLM2_DRAFT", "auto"),
                                      ("member", member, "LLM1_PRIOR_ART", "auto"),
                                      ("outsider", outsider, "LLM2_DRAFT", "auto")]:
        r = chat(persona, task, model)
        assert r.status_code == 200, r.content
        made[who].append(r.headers["X-Request-ID"])
    refused = chat(member, "LLM2_DRAFT", "ADVANCED")
    assert_error(refused, 403, "model_class_not_allowed")
    made["member_refused"] = [refused.headers["X-Request-ID"]]
    return made


def ids(persona: Persona, **params) -> set[str]:
    r = persona.client.get("/api/usage/logs/", params)
    assert r.status_code == 200, r.content
    return {row["request_id"] for row in r.json()["results"]}


def export(persona: Persona, **params) -> list[dict[str, str]]:
    r = persona.client.get("/api/usage/export.csv", params)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("text/csv")
    assert r["Content-Disposition"].startswith('attachment; filename="usage_')
    body = b"".join(r.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_filters_narrow_what_an_admin_sees(calls, tenant_admin, member):
    tenant = set(calls["admin"] + calls["member"] + calls["member_refused"])
    assert ids(tenant_admin) == tenant
    assert ids(tenant_admin, user=member.user.username) == set(calls["member"] + calls["member_refused"])
    assert ids(tenant_admin, task="LLM1_PRIOR_ART") == {calls["member"][1]}
    assert ids(tenant_admin, status="REFUSED") == set(calls["member_refused"])
    assert ids(tenant_admin, status="SUCCESS", user=tenant_admin.user.username) == set(calls["admin"])
    served = {row["request_id"]: row["model_name"]
              for row in tenant_admin.client.get("/api/usage/logs/").json()["results"]}
    large = served[calls["admin"][1]]
    assert ids(tenant_admin, model=large) == {i for i, m in served.items() if m == large}
    today = timezone.now().date()
    assert ids(tenant_admin, **{"from": today.isoformat(), "to": today.isoformat()}) == tenant
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert ids(tenant_admin, **{"from": tomorrow, "to": tomorrow}) == set()
    assert ids(tenant_admin, **{"to": (today - timedelta(days=1)).isoformat()}) == set()
    assert ids(tenant_admin, user="nobody-at-all") == set()


def test_members_and_outsiders_see_no_more_through_filters(calls, tenant_admin, member, outsider):
    assert ids(member) == set(calls["member"] + calls["member_refused"])
    assert ids(member, user=tenant_admin.user.username) == set()  # a member sees only their own rows
    assert ids(outsider) == set(calls["outsider"])
    assert ids(outsider, user=tenant_admin.user.username) == set()
    assert ids(outsider, task="LLM1_PRIOR_ART") == set()


@pytest.mark.parametrize("params", [
    {"status": "MAYBE"},
    {"from": "2026-02-01", "to": "2026-01-01"},
    {"from": "not-a-date"},
    {"from": "2024-01-01", "to": "2026-01-01"},  # more than 366 days
    {"task": "x" * 65},
])
def test_bad_filters_are_400(tenant_admin, params):
    assert_error(tenant_admin.client.get("/api/usage/logs/", params), 400, "validation_error")
    assert_error(tenant_admin.client.get("/api/usage/export.csv", params), 400, "validation_error")


def test_key_filter_by_id_or_prefix(calls, tenant_admin, outsider):
    from tenants import services as tenant_services
    from tests.asgi_client import GatewayClient

    issued = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="batch", user=tenant_admin.user)
    r = GatewayClient().post("/v1/LLM2_DRAFT/chat/completions",
                             {"model": "auto", "messages": [{"role": "user", "content": "Keyed"}], "max_tokens": 40},
                             format="json", HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    assert r.status_code == 200, r.content
    keyed = r.headers["X-Request-ID"]
    assert ids(tenant_admin, key=str(issued.api_key.pk)) == {keyed}
    assert ids(tenant_admin, key=issued.api_key.prefix) == {keyed}
    assert keyed in ids(tenant_admin)  # unfiltered, with the JWT calls
    assert {row["request_id"] for row in export(tenant_admin, key=issued.api_key.prefix)} == {keyed}
    # Another tenant naming this key finds nothing of it.
    assert ids(outsider, key=str(issued.api_key.pk)) == set()


def test_csv_export_is_the_callers_rows(calls, tenant_admin, member, outsider):
    rows = export(tenant_admin)
    assert {r["request_id"] for r in rows} == set(calls["admin"] + calls["member"] + calls["member_refused"])
    first = next(r for r in rows if r["request_id"] == calls["admin"][0])
    assert first["user"] == tenant_admin.user.username and first["task"] == "LLM2_DRAFT"
    assert first["status"] == "SUCCESS" and int(first["tokens_in"]) > 0 and int(first["cost_micro_usd"]) > 0
    assert first["cost_usd"] == f"{int(first['cost_micro_usd']) / 1_000_000:.6f}"
    assert [r["admitted_at"] for r in rows] == sorted(r["admitted_at"] for r in rows)  # oldest first
    # The same filters as the list; members get their own rows, an outsider only theirs.
    assert {r["request_id"] for r in export(tenant_admin, status="REFUSED")} == set(calls["member_refused"])
    assert {r["request_id"] for r in export(member)} == set(calls["member"] + calls["member_refused"])
    assert {r["request_id"] for r in export(outsider)} == set(calls["outsider"])
    assert export(outsider, user=tenant_admin.user.username) == []
    # A client that asks for CSV alone gets it (not a 406).
    r = tenant_admin.client.get("/api/usage/export.csv", HTTP_ACCEPT="text/csv")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")


def test_csv_export_needs_authentication(client, db):
    r = client.get("/api/usage/export.csv")
    assert r.status_code == 401
    assert r.json()["error"]["code"]
