"""Every console page: super admins get it, staff read it, tenant users and anonymous visitors are refused."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from tests.adminconsole.conftest import CONSOLE_PAGES, session_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def pages(tenant_admin) -> list[str]:
    return [p.format(slug=tenant_admin.tenant.slug) for p in CONSOLE_PAGES]


def test_every_page_renders_for_a_super_admin(su_client, pages, tenant_admin):
    call_command("generate_usage", tenants=2, days=3, calls_per_day=4, stdout=open("/dev/null", "w"))
    for url in pages:
        response = su_client.get(url)
        assert response.status_code == 200, url
        assert b"LLM Gateway console" in response.content
        assert "Server-Timing" in response


def test_staff_read_but_cannot_write(staff_client, pages, tenant_admin):
    for url in pages:
        assert staff_client.get(url).status_code == 200, url
    response = staff_client.post("/console/plan-changes/", {"tenant": tenant_admin.tenant.slug, "plan": "FREE"})
    assert response.status_code == 403
    tenant_admin.tenant.signup_ati_token.refresh_from_db()
    assert tenant_admin.tenant.signup_ati_token.plan_tier == "PRO"


@pytest.mark.parametrize("who", ["tenant_admin", "member"])
def test_tenant_users_are_refused(request, pages, who):
    persona = request.getfixturevalue(who)
    client = session_client(persona.user)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    # Writes too: nothing changes.
    response = client.post("/console/plan-changes/", {"tenant": persona.tenant.slug, "plan": "ENTERPRISE"})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    persona.tenant.signup_ati_token.refresh_from_db()
    assert persona.tenant.signup_ati_token.plan_tier == "PRO"


def test_anonymous_visitors_go_to_the_login(client, pages):
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"/admin/login/?next={url}"


def test_tenant_api_tokens_do_not_open_the_console(tenant_admin, pages):
    # A tenant admin's JWT is for the API; the console only knows staff sessions.
    for url in pages:
        response = tenant_admin.client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url


def test_unknown_tenant_is_404(su_client):
    assert su_client.get("/console/tenants/no-such-tenant/").status_code == 404


def test_overview_charts_and_totals_come_from_the_rollup(su_client, catalog):
    call_command("generate_usage", tenants=3, days=5, calls_per_day=6, stdout=open("/dev/null", "w"))
    from metering.models import UsageDaily, UsageLog

    response = su_client.get("/console/")
    html = response.content.decode()
    assert html.count("<svg") == 4
    assert 'class="bar"' in html and "Requests per day, by task" in html and "Top 10 tenants by cost" in html
    admitted = UsageLog.objects.exclude(status="REFUSED").count()
    assert sum(UsageDaily.objects.values_list("requests", flat=True)) == admitted
    assert response.context["data"]["totals"]["requests"] == admitted
    assert len(response.context["data"]["top_tenants"]) == 3


def test_tenant_page_shows_quota_bars_limits_and_charts(su_client, tenant_admin):
    response = su_client.get(f"/console/tenants/{tenant_admin.tenant.slug}/")
    html = response.content.decode()
    assert html.count("<svg") == 3
    keys = {bar.key for bar in response.context["data"]["tenant_bars"]}
    assert {"tenant_tokens_per_day", "tenant_tokens_per_month", "tenant_cost_per_month_usd"} <= keys
    sources = {row["source"] for row in response.context["data"]["limits"]}
    assert any("plan PRO" in source for source in sources)
    assert "acme-admin" in html  # the first admin, whose effective limits are shown
