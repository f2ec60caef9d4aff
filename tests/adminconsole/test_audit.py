"""The audit log records changes from the admin, the console, the API and the commands, and shows them."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from metering.models import PolicyRule
from tenants.audit import AuditEvent, audit_context, audit_record
from tenants.models import ATIToken

pytestmark = pytest.mark.django_db


def quiet(*args, **kwargs):
    from io import StringIO

    call_command(*args, stdout=StringIO(), stderr=StringIO(), **kwargs)


def test_commands_are_recorded_without_an_actor(tenant_admin):
    slug = tenant_admin.tenant.slug
    quiet("suspend_tenant", slug)
    quiet("set_enforcement_mode", "--tenant", slug, "--mode", "SOFT")
    quiet("set_policy", "--scope", "tenant", "--tenant", slug, "--key", "tenant_rpm", "--value", "7")
    quiet("revoke_ati_token", tenant_admin.tenant.signup_ati_token_id)
    events = {e.action: e for e in AuditEvent.objects.filter(source="COMMAND")}
    assert {"tenant.status_change", "tenant.enforcement_mode_change", "policy_rule.create",
            "ati_token.revoke", "ati_token.issue"} <= set(events)
    assert all(e.actor is None and e.actor_label == "" for e in events.values())
    status = events["tenant.status_change"]
    assert (status.before, status.after, status.tenant_id) == ({"status": "ACTIVE"}, {"status": "SUSPENDED"},
                                                               tenant_admin.tenant.pk)
    assert events["tenant.enforcement_mode_change"].after == {"enforcement_mode": "SOFT"}
    assert events["policy_rule.create"].after["value"] == 7


def test_admin_edits_and_actions_are_recorded(admin_client, tenant_admin):
    token = tenant_admin.tenant.signup_ati_token
    response = admin_client.post(f"/admin/tenants/atitoken/{token.pk}/change/",
                                 {"plan_tier": "ENTERPRISE", "status": "ACTIVE", "expires_at_0": "",
                                  "expires_at_1": "", "note": "upgrade"})
    assert response.status_code == 302, response.content[:2000]
    change = AuditEvent.objects.get(action="tenant.plan_change")
    assert (change.source, change.actor_label) == ("ADMIN", "admin")
    assert (change.before, change.after) == ({"plan_tier": "PRO"}, {"plan_tier": "ENTERPRISE"})
    assert AuditEvent.objects.get(action="ati_token.update").after == {"note": "upgrade"}

    response = admin_client.post("/admin/tenants/tenant/", {"action": "suspend_tenants",
                                                             "_selected_action": [tenant_admin.tenant.pk]})
    assert response.status_code == 302
    suspended = AuditEvent.objects.get(action="tenant.status_change")
    assert (suspended.source, suspended.actor_label) == ("ADMIN", "admin")  # the service saw the admin's context

    response = admin_client.post("/admin/metering/policyrule/add/", {
        "scope": "TENANT", "tenant": tenant_admin.tenant.pk, "key": "tenant_rpm", "value": "9", "is_active": "on",
        "timezone": "UTC"})
    assert response.status_code == 302, response.content[:3000]
    rule = PolicyRule.objects.get(scope="TENANT", key="tenant_rpm")
    created = AuditEvent.objects.get(action="policy_rule.create")
    assert (created.source, created.object_id, created.tenant_id) == ("ADMIN", str(rule.pk), tenant_admin.tenant.pk)
    response = admin_client.post(f"/admin/metering/policyrule/{rule.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    deleted = AuditEvent.objects.get(action="policy_rule.delete")
    assert deleted.object_id == str(rule.pk) and deleted.before["value"] == 9

    issued = admin_client.post("/admin/tenants/atitoken/add/", {"plan_tier": "FREE", "note": "trial"})
    assert issued.status_code == 302
    assert AuditEvent.objects.filter(action="ati_token.issue", source="ADMIN", actor_label="admin").count() == 1


def test_admin_rule_inline_on_the_tenant_is_recorded(admin_client, tenant_admin):
    tenant = tenant_admin.tenant
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/")
    assert page.status_code == 200
    data = {"name": tenant.name, "slug": tenant.slug, "status": "ACTIVE", "enforcement_mode": "HARD"}
    for formset in page.context["inline_admin_formsets"]:
        fs = formset.formset
        data.update({f"{fs.prefix}-TOTAL_FORMS": fs.total_form_count(), f"{fs.prefix}-INITIAL_FORMS":
                     fs.initial_form_count(), f"{fs.prefix}-MIN_NUM_FORMS": 0, f"{fs.prefix}-MAX_NUM_FORMS": 1000})
        for i, form in enumerate(fs.initial_forms):
            for name, field in form.fields.items():
                value = form.initial.get(name, field.initial)
                if value is not None and value is not False:
                    data[f"{fs.prefix}-{i}-{name}"] = getattr(value, "pk", value)
        if fs.model is PolicyRule:
            n = fs.total_form_count()
            data[f"{fs.prefix}-TOTAL_FORMS"] = n + 1
            data.update({f"{fs.prefix}-{n}-key": "tenant_rpm", f"{fs.prefix}-{n}-value": "11",
                         f"{fs.prefix}-{n}-is_active": "on"})
    response = admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", data)
    assert response.status_code == 302, [f.errors for f in response.context["inline_admin_formsets"]] if \
        response.context else response
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"policy_rule.create", "tenant.enforcement_mode_change"} <= actions
    assert AuditEvent.objects.get(action="policy_rule.create").after["value"] == 11


def test_provider_credentials_are_recorded_without_the_key(admin_client, catalog):
    from llm.models import ProviderCredential as credential_model  # noqa: N813
    response = admin_client.post("/admin/llm/providercredential/add/", {
        "provider": "openai", "label": "main", "api_key": "sk-test-abcdefghijklmnop1234", "base_url": "",
        "is_active": "on"})
    assert response.status_code == 302, response.content[:2000]
    credential = credential_model.objects.get()
    event = AuditEvent.objects.get(action="provider_credential.create")
    assert event.object_id == str(credential.pk) and event.source == "ADMIN"
    assert "sk-test-abcdefghijklmnop1234" not in str(event.after)
    assert event.after["provider"] == "openai" and event.after["key"].endswith("1234")


def test_context_and_explicit_attribution(superuser, tenant_admin):
    with audit_context(actor=superuser, source="CONSOLE"):
        event = audit_record(action="x.y", object_type="t", object_id=1)
        explicit = audit_record(action="x.z", object_type="t", object_id=2, source="API", actor=tenant_admin.user)
    assert (event.source, event.actor) == ("CONSOLE", superuser)
    assert (explicit.source, explicit.actor) == ("API", tenant_admin.user)
    assert audit_record(action="x.w", object_type="t", object_id=3).source == "COMMAND"
    with pytest.raises(ValueError):
        audit_record(action="x", object_type="t", object_id=4, source="EMAIL")


def test_audit_page_filters(su_client, tenant_admin, outsider):
    quiet("suspend_tenant", outsider.tenant.slug)
    su_client.post("/console/plan-changes/", {"tenant": tenant_admin.tenant.slug, "plan": "FREE"})
    page = su_client.get("/console/audit/")
    actions = [e.action for e in page.context["page"]]
    assert actions[:2] == ["tenant.plan_change", "tenant.status_change"]
    only_console = su_client.get("/console/audit/", {"source": "CONSOLE"}).context["page"]
    assert [e.action for e in only_console] == ["tenant.plan_change"]
    by_tenant = su_client.get("/console/audit/", {"tenant": outsider.tenant.slug}).context["page"]
    assert {e.tenant_id for e in by_tenant} == {outsider.tenant.pk}
    assert "tenant.status_change" in {e.action for e in by_tenant}
    by_action = su_client.get("/console/audit/", {"action": "tenant.status_change"}).context["page"]
    assert [e.tenant_id for e in by_action] == [outsider.tenant.pk]
    future = su_client.get("/console/audit/", {"from": "2999-01-01"}).context["page"]
    assert list(future) == []
    html = su_client.get("/console/audit/", {"source": "CONSOLE"}).content.decode()
    assert "PRO" in html and "FREE" in html and "root-admin" in html
    assert ATIToken.objects.filter(pk=tenant_admin.tenant.signup_ati_token_id, plan_tier="FREE").exists()
