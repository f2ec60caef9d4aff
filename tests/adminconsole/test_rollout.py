"""The console's rollout page and tenant panel (Django test client): the report of a SHADOW tenant's
traffic beyond its limits, and the audited switch to SOFT/HARD (POST, CSRF, super admins only)."""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.audit import AuditEvent
from tenants.models import Tenant
from tests.adminconsole.conftest import session_client
from tests.conftest import assert_error
from tests.metering.test_rollout import chat, ledger_totals, shadow_traffic

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_rollout_page_says_what_hard_would_have_refused(su_client, tenant_admin, member, outsider):
    rules = shadow_traffic(tenant_admin, member)
    tokens = ledger_totals(tenant_admin.tenant)["tokens"]
    slug = tenant_admin.tenant.slug

    page = su_client.get("/console/rollout/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"Switching to HARD would have refused 3 calls / {tokens:,} tokens" in html
    assert f'data-tenant="{slug}"' in html and f'data-tenant="{outsider.tenant.slug}"' not in html
    assert "input_too_large" in html and f"rule #{rules['task_day'].pk} tenant {slug}" in html
    assert 'value="HARD"' in html  # the switch, for a super admin

    narrowed = su_client.get("/console/rollout/", {"tenant": outsider.tenant.slug}).content.decode()
    assert "would have refused 0 calls" in narrowed
    assert "No tenant with slug" in su_client.get("/console/rollout/", {"tenant": "nobody"}).content.decode()
    assert "must not be after" in su_client.get("/console/rollout/", {"from": "2026-03-10",
                                                                      "to": "2026-03-01"}).content.decode()


def test_the_tenant_page_has_the_panel_and_switches_to_hard_audited(su_client, superuser, tenant_admin, member):
    shadow_traffic(tenant_admin, member)
    slug = tenant_admin.tenant.slug
    page = su_client.get(f"/console/tenants/{slug}/").content.decode()
    assert 'id="rollout"' in page and "Switching to HARD would have refused 3 calls" in page
    assert 'data-mode="SOFT"' in page and 'data-mode="HARD"' in page and 'data-mode="SHADOW"' not in page

    response = su_client.post(f"/console/tenants/{slug}/enforcement-mode/", {"mode": "HARD"})
    assert response.status_code == 302 and response["Location"] == f"/console/tenants/{slug}/#rollout"
    assert Tenant.objects.get(pk=tenant_admin.tenant.pk).enforcement_mode == "HARD"
    event = AuditEvent.objects.get(action="tenant.enforcement_mode_change", source="CONSOLE")
    assert (event.actor, event.source, event.before, event.after) == (
        superuser, "CONSOLE", {"enforcement_mode": "SHADOW"}, {"enforcement_mode": "HARD"})
    # From the next call, the tenant is refused where the report said it would be.
    assert_error(chat(member), 429, "quota_exceeded")

    assert su_client.post(f"/console/tenants/{slug}/enforcement-mode/",
                          {"mode": "SOFT", "next": "/console/rollout/"})["Location"] == "/console/rollout/"
    assert Tenant.objects.get(pk=tenant_admin.tenant.pk).enforcement_mode == "SOFT"
    su_client.post(f"/console/tenants/{slug}/enforcement-mode/", {"mode": "inherit",
                                                                  "next": "https://elsewhere.example/"})
    assert Tenant.objects.get(pk=tenant_admin.tenant.pk).enforcement_mode is None
    # A bad mode changes nothing and says why.
    bad = su_client.post(f"/console/tenants/{slug}/enforcement-mode/", {"mode": "LOUD"}, follow=True)
    assert "mode must be one of" in bad.content.decode()
    assert AuditEvent.objects.filter(action="tenant.enforcement_mode_change", source="CONSOLE").count() == 3
    assert su_client.post("/console/tenants/nobody/enforcement-mode/", {"mode": "HARD"}).status_code == 404
    assert su_client.get(f"/console/tenants/{slug}/enforcement-mode/").status_code == 405


def test_only_super_admins_switch_and_only_with_the_csrf_token(staff_client, superuser, tenant_admin):
    slug = tenant_admin.tenant.slug
    tenant_admin.tenant.enforcement_mode = "SHADOW"
    tenant_admin.tenant.save()
    # Read-only staff see the page and the panel, without the switch; their POST is refused.
    assert staff_client.get("/console/rollout/").status_code == 200
    assert 'data-mode="HARD"' not in staff_client.get(f"/console/tenants/{slug}/").content.decode()
    assert staff_client.post(f"/console/tenants/{slug}/enforcement-mode/", {"mode": "HARD"}).status_code == 403
    # Tenant users and anonymous visitors go to the login page.
    for client in (session_client(tenant_admin.user), Client()):
        response = client.post(f"/console/tenants/{slug}/enforcement-mode/", {"mode": "HARD"})
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
        assert "/admin/login/" in client.get("/console/rollout/")["Location"]
    # A super admin's POST without the CSRF token is refused.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(superuser)
    assert strict.post(f"/console/tenants/{slug}/enforcement-mode/", {"mode": "HARD"}).status_code == 403
    assert Tenant.objects.get(pk=tenant_admin.tenant.pk).enforcement_mode == "SHADOW"
    assert not AuditEvent.objects.filter(action="tenant.enforcement_mode_change").exists()
