"""Quota requests: tenant admins ask through the API, super admins decide in the console."""

from __future__ import annotations

import pytest

from adminconsole.models import QuotaRequest
from metering.alerts.models import Notification
from metering.models import PolicyRule
from tenants.audit import AuditEvent
from tests.adminconsole.conftest import messages_of
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db
URL = "/api/quota-requests/"


def ask(persona, **data):
    body = {"key": "tenant_tokens_per_month", "task": None, "wanted_value": 9_000_000, "reason": "launch", **data}
    return persona.client.post(URL, body, format="json")


def test_tenant_admin_creates_and_lists_requests(tenant_admin):
    response = ask(tenant_admin, task="LLM2_DRAFT", wanted_value="9000000")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"] == "tenant_tokens_per_month" and body["task"] == "LLM2_DRAFT"
    assert body["wanted_value"] == 9_000_000  # canonical value from the registry
    assert body["status"] == "PENDING" and body["requested_by"] == "acme-admin"
    listing = tenant_admin.client.get(URL).json()
    assert listing["count"] == 1 and listing["results"][0]["id"] == body["id"]
    event = AuditEvent.objects.get(action="quota_request.create")
    assert (event.source, event.actor_label, event.tenant_id) == ("API", "acme-admin", tenant_admin.tenant.pk)


def test_usd_values_are_canonical_strings(tenant_admin):
    response = ask(tenant_admin, key="tenant_cost_per_month_usd", wanted_value="300.50")
    assert response.status_code == 201 and response.json()["wanted_value"] == "300.5"


def test_members_are_refused(member):
    assert_error(ask(member), 403, "forbidden")
    assert_error(member.client.get(URL), 403, "forbidden")
    assert not QuotaRequest.objects.exists()


def test_anonymous_is_401(client, catalog):
    assert client.get(URL).status_code == 401


def test_outsider_sees_only_their_own(tenant_admin, outsider):
    assert ask(tenant_admin).status_code == 201
    assert outsider.client.get(URL).json()["count"] == 0
    assert ask(outsider, key="tenant_rpm", wanted_value=500).status_code == 201
    assert [r["key"] for r in outsider.client.get(URL).json()["results"]] == ["tenant_rpm"]
    assert [r["key"] for r in tenant_admin.client.get(URL).json()["results"]] == ["tenant_tokens_per_month"]


@pytest.mark.parametrize("data, code, text", [
    ({"key": "tenant_lunches_per_day"}, "invalid_policy", "Unknown policy key"),
    ({"wanted_value": "a lot"}, "invalid_policy", "whole number"),
    ({"wanted_value": -1}, "invalid_policy", "cannot be negative"),
    ({"task": "LLM9"}, "task_unknown", "Unknown task"),
    ({"key": ""}, "validation_error", "Invalid input"),
])
def test_invalid_requests_are_400(tenant_admin, data, code, text):
    body = assert_error(ask(tenant_admin, **data), 400, code)
    assert text in body["error"]["message"]
    assert not QuotaRequest.objects.exists()


def test_a_second_pending_request_for_the_same_key_is_409(tenant_admin):
    assert ask(tenant_admin).status_code == 201
    assert_error(ask(tenant_admin, wanted_value=10_000_000), 409, "quota_request_pending")


def test_approval_creates_the_tenant_rule_and_notifies_the_admins(su_client, tenant_admin, member,
                                                                    django_capture_on_commit_callbacks):
    request_id = ask(tenant_admin, task="LLM2_DRAFT").json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = su_client.post(f"/console/quota-requests/{request_id}/decide/",
                                  {"decision": "approve", "note": "ok for Q4"}, follow=True)
    assert any("approved" in m for m in messages_of(response))
    rule = PolicyRule.objects.get(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_month",
                                  task__code="LLM2_DRAFT")
    assert rule.value == 9_000_000
    decided = QuotaRequest.objects.get(pk=request_id)
    assert (decided.status, decided.decided_by.username, decided.note, decided.rule_id) == (
        "APPROVED", "root-admin", "ok for Q4", rule.pk)
    notes = Notification.objects.filter(tenant=tenant_admin.tenant)
    assert [n.user.username for n in notes] == ["acme-admin"]  # admins only, not members
    assert notes[0].kind == "QUOTA_REQUEST_APPROVED" and "ok for Q4" in notes[0].body
    # The new limit is in force for the tenant's next call.
    limits = tenant_admin.client.get("/api/limits/").json()["limits"]["LLM2_DRAFT"]
    assert any(x["key"] == "tenant_tokens_per_month" and x["value"] == 9_000_000 and x["applies_to_task"]
               == "LLM2_DRAFT" for x in limits)
    assert {e.action for e in AuditEvent.objects.filter(source="CONSOLE")} == {"policy_rule.create",
                                                                               "quota_request.approve"}
    assert tenant_admin.client.get(URL).json()["results"][0]["status"] == "APPROVED"


def test_denial_notifies_without_a_rule(su_client, tenant_admin):
    request_id = ask(tenant_admin).json()["id"]
    response = su_client.post(f"/console/quota-requests/{request_id}/decide/", {"decision": "deny", "note": "no"},
                              follow=True)
    assert any("denied" in m for m in messages_of(response))
    assert not PolicyRule.objects.filter(scope="TENANT").exists()
    note = Notification.objects.get(tenant=tenant_admin.tenant)
    assert note.kind == "QUOTA_REQUEST_DENIED" and "was denied" in note.body
    # Deciding again is refused.
    response = su_client.post(f"/console/quota-requests/{request_id}/decide/", {"decision": "approve"}, follow=True)
    assert any("already denied" in m for m in messages_of(response))
    assert QuotaRequest.objects.get(pk=request_id).status == "DENIED"


def test_console_lists_pending_requests_with_a_badge(su_client, tenant_admin):
    ask(tenant_admin)
    html = su_client.get("/console/quota-requests/").content.decode()
    assert 'title="pending">1<' in html and "tenant_tokens_per_month" in html and "Approve" in html


def test_staff_cannot_decide(staff_client, tenant_admin):
    request_id = ask(tenant_admin).json()["id"]
    assert staff_client.post(f"/console/quota-requests/{request_id}/decide/", {"decision": "approve"}).status_code \
        == 403
    assert QuotaRequest.objects.get(pk=request_id).status == "PENDING"


@pytest.mark.parametrize("page", ["abc", "0", "-1", "1.5"])
def test_a_malformed_page_of_quota_requests_is_a_400(tenant_admin, page):
    response = tenant_admin.client.get("/api/quota-requests/", {"page": page})
    assert response.status_code == 400, response.content
    assert set(response.json()["error"]) >= {"code", "message", "type"}
