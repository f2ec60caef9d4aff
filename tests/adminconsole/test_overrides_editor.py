"""The overrides editor: tenant and user rules, time windows and usage conditions, inactive rules shown
as inactive, deactivate/activate/delete from the tenant page and the overrides page, all audited."""

from __future__ import annotations

import pytest

from metering.models import PolicyRule
from tenants.audit import AuditEvent
from tests.adminconsole.conftest import messages_of

pytestmark = pytest.mark.django_db


def _post(client, url, data):
    return client.post(url, data, follow=True)


def user_limit(persona, key: str, task: str = "LLM2_DRAFT"):
    rows = persona.client.get("/api/limits/").json()["limits"][task]
    return [r["value"] for r in rows if r["key"] == key]


def test_a_user_rule_with_a_window_and_a_condition(su_client, tenant_admin, member,
                                                   django_capture_on_commit_callbacks):
    url = f"/console/tenants/{tenant_admin.tenant.slug}/"
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, url, {
            "action": "create", "user": member.user.username, "key": "max_tokens_out", "task": "LLM2_DRAFT",
            "value": "256", "weekdays": ["0", "1", "2", "3", "4"], "start": "09:00", "end": "18:00",
            "timezone": "Europe/Paris", "when_quota": "tenant_tokens_per_month", "when_percent": "80",
            "note": "business hours"})
    assert any("Override saved (user acme-member)" in m for m in messages_of(response)), messages_of(response)
    rule = PolicyRule.objects.get(scope="USER", user=member.user, key="max_tokens_out")
    assert (rule.value, rule.task.code, rule.weekdays, rule.timezone) == (256, "LLM2_DRAFT", [0, 1, 2, 3, 4],
                                                                          "Europe/Paris")
    assert (rule.start_time.isoformat(), rule.end_time.isoformat()) == ("09:00:00", "18:00:00")
    assert (rule.when_quota_key, rule.when_usage_percent_gte) == ("tenant_tokens_per_month", 80)
    event = AuditEvent.objects.get(action="policy_rule.create", object_id=str(rule.pk))
    assert (event.source, event.tenant_id, event.after["user"]) == ("CONSOLE", tenant_admin.tenant.pk,
                                                                    "acme-member")
    page = response.content.decode()
    assert f'id="rule-{rule.pk}"' in page
    assert "Mon-Fri 09:00-18:00 Europe/Paris" in page and "once tenant_tokens_per_month ≥ 80%" in page
    assert "user <strong>acme-member</strong>" in page


def test_a_plain_user_rule_is_enforced_until_switched_off(su_client, tenant_admin, member,
                                                          django_capture_on_commit_callbacks):
    url = f"/console/tenants/{tenant_admin.tenant.slug}/"
    with django_capture_on_commit_callbacks(execute=True):
        _post(su_client, url, {"action": "create", "user": member.user.username, "key": "max_tokens_out",
                               "value": "111"})
    rule = PolicyRule.objects.get(scope="USER", user=member.user, key="max_tokens_out")
    assert 111 in user_limit(member, "max_tokens_out")
    assert 111 not in user_limit(tenant_admin, "max_tokens_out")  # a user rule, not the tenant's

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, url, {"action": "deactivate", "rule": rule.pk})
    assert any("switched off" in m for m in messages_of(response))
    rule.refresh_from_db()
    assert rule.is_active is False
    assert 111 not in user_limit(member, "max_tokens_out")
    page = response.content.decode()
    assert f'<tr id="rule-{rule.pk}" class="inactive">' in page
    assert '<span class="pill inactive">inactive</span>' in page
    event = AuditEvent.objects.get(action="policy_rule.deactivate", object_id=str(rule.pk))
    assert (event.before, event.after, event.source) == ({"is_active": True}, {"is_active": False}, "CONSOLE")

    with django_capture_on_commit_callbacks(execute=True):
        _post(su_client, url, {"action": "activate", "rule": rule.pk})
    assert 111 in user_limit(member, "max_tokens_out")
    assert AuditEvent.objects.filter(action="policy_rule.activate", object_id=str(rule.pk)).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, url, {"action": "delete", "rule": rule.pk})
    assert not PolicyRule.objects.filter(pk=rule.pk).exists()
    event = AuditEvent.objects.get(action="policy_rule.delete", object_id=str(rule.pk))
    assert (event.before["user"], event.before["value"], event.source) == ("acme-member", 111, "CONSOLE")
    assert 111 not in user_limit(member, "max_tokens_out")


def test_rules_of_another_tenant_are_out_of_reach_of_this_page(su_client, tenant_admin, outsider):
    theirs = PolicyRule.objects.create(scope="USER", user=outsider.user, key="max_tokens_out", value=5)
    url = f"/console/tenants/{tenant_admin.tenant.slug}/"
    for action in ("delete", "deactivate", "value"):
        response = _post(su_client, url, {"action": action, "rule": theirs.pk, "value": "9"})
        assert any("No such rule" in m for m in messages_of(response)), action
    theirs.refresh_from_db()
    assert (theirs.value, theirs.is_active) == (5, True)
    response = _post(su_client, url, {"action": "create", "user": outsider.user.username, "key": "max_tokens_out",
                                      "value": "7"})
    assert any("has no user" in m for m in messages_of(response))
    assert not PolicyRule.objects.filter(user=outsider.user, value=7).exists()
    assert AuditEvent.objects.filter(action__startswith="policy_rule.").count() == 0


@pytest.mark.parametrize("data, message", [
    ({"start": "9am"}, "HH:MM"),
    ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
    ({"when_quota": "tenant_tokens_per_month"}, "percent"),
    ({"when_percent": "80"}, "quota"),
])
def test_bad_windows_and_conditions_are_refused_and_kept_in_the_form(su_client, tenant_admin, data, message):
    form = {"action": "create", "key": "tenant_rpm", "value": "5", **data}
    response = _post(su_client, f"/console/tenants/{tenant_admin.tenant.slug}/", form)
    assert any(message.lower() in m.lower() for m in messages_of(response)), messages_of(response)
    assert not PolicyRule.objects.filter(scope="TENANT", tenant=tenant_admin.tenant).exists()
    assert response.context["form"]["key"] == "tenant_rpm"


def test_the_overrides_page_lists_filters_and_changes_rules(su_client, staff_client, tenant_admin, member, outsider,
                                                            django_capture_on_commit_callbacks):
    tenant_rule = PolicyRule.objects.create(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_rpm", value=5)
    user_rule = PolicyRule.objects.create(scope="USER", user=member.user, key="max_tokens_out", value=64,
                                          is_active=False)
    other = PolicyRule.objects.create(scope="TENANT", tenant=outsider.tenant, key="tenant_rpm", value=6)
    page = su_client.get("/console/overrides/")
    listed = [row["rule"].pk for row in page.context["rows"]]
    assert set(listed) == {tenant_rule.pk, user_rule.pk, other.pk}
    assert listed[-1] == user_rule.pk  # inactive last
    assert [r["rule"].pk for r in su_client.get("/console/overrides/?active=no").context["rows"]] == [user_rule.pk]
    found = {r["rule"].pk for r in su_client.get("/console/overrides/?q=globex").context["rows"]}
    assert found == {other.pk}
    # Staff read; only super admins change.
    assert staff_client.get("/console/overrides/").status_code == 200
    assert staff_client.post("/console/overrides/", {"action": "delete", "rule": other.pk}).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, "/console/overrides/", {"action": "activate", "rule": user_rule.pk,
                                                             "next": "/console/overrides/?q=acme"})
    assert response.redirect_chain[-1][0] == "/console/overrides/?q=acme"
    user_rule.refresh_from_db()
    assert user_rule.is_active
    with django_capture_on_commit_callbacks(execute=True):
        _post(su_client, "/console/overrides/", {"action": "delete", "rule": other.pk, "next": "https://evil/"})
    assert not PolicyRule.objects.filter(pk=other.pk).exists()
    assert AuditEvent.objects.filter(action="policy_rule.delete", object_id=str(other.pk),
                                     tenant=outsider.tenant).exists()
    # Plan rules are not editable here.
    plan_rule = PolicyRule.objects.filter(scope="PLAN").first()
    response = _post(su_client, "/console/overrides/", {"action": "delete", "rule": plan_rule.pk})
    assert any("No such rule" in m for m in messages_of(response))
    assert PolicyRule.objects.filter(pk=plan_rule.pk).exists()
