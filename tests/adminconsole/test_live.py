"""The console's live parts: fragment views (staff only), hourly granularity, provider health.

Ledger rows are written here with known numbers (the health panel and the hourly series are reads of
the ledger); the breaker state is put in the shared cache by the router's own functions."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from adminconsole import selectors
from catalog.models import Task
from catalog.selectors import provider_models_active
from llm import router
from metering.models import UsageLog
from tests.adminconsole.conftest import session_client

pytestmark = pytest.mark.django_db

FRAGMENTS = ["/console/live/", "/console/live/?granularity=hour", "/console/tenants/{slug}/live/",
             "/console/tenants/{slug}/live/?part=charts&granularity=hour", "/console/providers/live/",
             "/console/providers/live/?window=24h"]


def ledger_row(persona, *, ago: timedelta = timedelta(minutes=5), status: str = "SUCCESS", model: str = "",
               latency_ms: int = 0, attempts: list | None = None, tokens: int = 10, cost: int = 100) -> UsageLog:
    at = timezone.now() - ago
    return UsageLog.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", tenant=persona.tenant, user=persona.user,
        task=Task.objects.get(code="LLM2_DRAFT"), feature_code="drafting", provider="offline" if model else "",
        model_name=model, tokens_in=tokens if status != "REFUSED" else 0, tokens_out=0, api_calls=1,
        cost_micro_usd=cost if status != "REFUSED" else 0, latency_ms=latency_ms, status=status,
        enforcement_mode="HARD", attempts=attempts or [], admitted_at=at, created_at=at)


def attempt(model: str, latency_ms: int, error: str = "provider_timeout") -> dict:
    return {"provider": "offline", "model": model, "error": error, "detail": "timed out", "tokens_in": 0,
            "tokens_out": 0, "latency_ms": latency_ms}


# ------------------------------------------------------------------------------------------ fragments


def test_fragments_are_partial_and_poll(su_client, tenant_admin):
    for url in FRAGMENTS:
        response = su_client.get(url.format(slug=tenant_admin.tenant.slug))
        assert response.status_code == 200, url
        body = response.content.decode()
        assert "<html" not in body and "hx-get=" in body and 'hx-trigger="every 10s"' in body, url
    page = su_client.get(f"/console/tenants/{tenant_admin.tenant.slug}/").content.decode()
    assert "htmx-2.0.11.min.js" in page and 'id="tenant-lead"' in page and 'id="tenant-charts"' in page


def test_fragments_are_for_staff_only(client, staff_client, tenant_admin, member):
    for url in FRAGMENTS:
        url = url.format(slug=tenant_admin.tenant.slug)
        assert staff_client.get(url).status_code == 200, url  # staff read
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
        for persona in (tenant_admin, member):
            response = session_client(persona.user).get(url)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    assert staff_client.get("/console/tenants/no-such-tenant/live/").status_code == 404


def test_the_fragment_shows_new_data(su_client, tenant_admin):
    from metering.services import usage_daily_add

    before = su_client.get("/console/live/").context["data"]["totals"]["requests"]
    usage_daily_add(ledger_row(tenant_admin, model="offline-pro-m"))
    assert su_client.get("/console/live/").context["data"]["totals"]["requests"] == before + 1


# ------------------------------------------------------------------------------------------ hourly


def test_hourly_series_covers_48_hours_from_the_ledger(su_client, tenant_admin, member, outsider):
    # The current hour's rows are stamped "now" (minutes ago would fall in the previous hour during
    # an hour's first minutes); `now` below is taken after them, so they are in its hour.
    ledger_row(tenant_admin, ago=timedelta(0), tokens=7)
    ledger_row(member, ago=timedelta(0), tokens=5)
    ledger_row(member, ago=timedelta(0), status="REFUSED")
    ledger_row(tenant_admin, ago=timedelta(hours=30), tokens=11)
    ledger_row(tenant_admin, ago=timedelta(hours=49), tokens=1000)  # before the 48 hours
    ledger_row(outsider, ago=timedelta(minutes=1), tokens=3)
    now = timezone.now()
    hours, cells = selectors.hourly_cached(now=now, field="task_id", tenant_id=tenant_admin.tenant.pk)
    assert len(hours) == 48 and hours[-1] == now.replace(minute=0, second=0, microsecond=0)
    task = Task.objects.get(code="LLM2_DRAFT").pk
    by_hour = {hour: row for (hour, task_id), row in cells.items() if task_id == task}
    current = by_hour[hours[-1]]
    assert (current["requests"], current["refused"], current["tokens_in"], current["cost_micro_usd"]) == (2, 1, 12,
                                                                                                          200)
    assert sum(r["tokens_in"] for r in by_hour.values()) == 7 + 5 + 11  # not the 49-hour-old row, not globex
    response = su_client.get(f"/console/tenants/{tenant_admin.tenant.slug}/?granularity=hour")
    assert response.status_code == 200
    assert "Tokens per hour, by task" in response.content.decode() and "hour (UTC)" in response.content.decode()
    overview = su_client.get("/console/?granularity=hour").content.decode()
    assert "Requests per hour, by task" in overview and "hourly, 48 hours" in overview


# ----------------------------------------------------------------------------------- provider health


def test_provider_health_numbers_and_breaker_state(su_client, tenant_admin):
    ledger_row(tenant_admin, model="offline-pro-m", latency_ms=100)
    ledger_row(tenant_admin, model="offline-pro-m", latency_ms=250, attempts=[attempt("offline-pro-l", 50)])
    ledger_row(tenant_admin, model="offline-pro-m", latency_ms=300)
    ledger_row(tenant_admin, model="offline-pro-m", status="ERROR", latency_ms=100,
               attempts=[attempt("offline-pro-l", 40), attempt("offline-pro-m", 60)])
    ledger_row(tenant_admin, status="REFUSED")
    ledger_row(tenant_admin, model="offline-pro-m", latency_ms=900, ago=timedelta(hours=2))
    large = next(m for m in provider_models_active() if m.model_name == "offline-pro-l")
    router.open_now(large)

    health = selectors.provider_health(now=timezone.now(), window="1h")
    rows = {r.model_name: r for r in health["rows"]}
    medium, large_row = rows["offline-pro-m"], rows["offline-pro-l"]
    assert (medium.calls, medium.errors, medium.error_rate, medium.fallbacks) == (4, 1, 25.0, 0)
    assert (medium.p50_ms, medium.p95_ms) == (200, 300)  # serving attempts only: 100, 250 - 50, 300
    assert (large_row.calls, large_row.errors, large_row.error_rate, large_row.fallbacks) == (2, 2, 100.0, 2)
    assert large_row.p50_ms is None
    assert (large_row.breaker, medium.breaker) == ("open", "closed")
    assert health["rows"][0].model_name == "offline-pro-l"  # open breakers first
    day = {r.model_name: r for r in selectors.provider_health(now=timezone.now(), window="24h")["rows"]}
    assert day["offline-pro-m"].calls == 5 and day["offline-pro-m"].p95_ms == 900

    page = su_client.get("/console/providers/").content.decode()
    assert 'data-model="offline:offline-pro-l"' in page and '<span class="pill open">open</span>' in page
    # A success closes the breaker: the next poll shows it.
    router.record_success(large, 0.1)
    fragment = su_client.get("/console/providers/live/")
    state = {r.model_name: r.breaker for r in fragment.context["health"]["rows"]}
    assert state["offline-pro-l"] == "closed"
