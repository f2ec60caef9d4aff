"""The per-day rollup follows the ledger exactly, and reports (HTML, CSV) read it."""

from __future__ import annotations

import csv
import io

import pytest
from django.db.models import Sum
from django.utils import timezone

from metering.models import UsageDaily, UsageLog
from tests.metering.test_apis import chat

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def traffic(tenant_admin, member, outsider):
    for persona, task in [(tenant_admin, "LLM2_DRAFT"), (tenant_admin, "LLM2_DRAFT"), (tenant_admin, "LLM1_PRIOR_ART"),
                          (member, "LLM2_DRAFT"), (outsider, "LLM3_DIAGRAM")]:
        assert chat(persona, task=task).status_code == 200
    # A refusal is in the ledger and the rollup too (FREE has no drafting: 403 feature/task not in plan).
    assert chat(outsider, task="LLM2_DRAFT", model="no-such-model").status_code in (403, 404)
    return tenant_admin


def _ledger_totals(**filters) -> dict:
    rows = UsageLog.objects.filter(**filters)
    return {"requests": rows.exclude(status="REFUSED").count(), "refused": rows.filter(status="REFUSED").count(),
            **{k: v or 0 for k, v in rows.aggregate(tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"),
                                                    api_calls=Sum("api_calls"),
                                                    cost_micro_usd=Sum("cost_micro_usd")).items()}}


def _rollup_totals(**filters) -> dict:
    sums = UsageDaily.objects.filter(**filters).aggregate(
        **{k: Sum(k) for k in ("requests", "refused", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd")})
    return {k: v or 0 for k, v in sums.items()}


def test_settlement_keeps_one_rollup_row_per_user_task_model_and_day(traffic, tenant_admin, outsider):
    assert _rollup_totals() == _ledger_totals()
    assert _rollup_totals(tenant=tenant_admin.tenant) == _ledger_totals(tenant=tenant_admin.tenant)
    assert _rollup_totals(tenant=outsider.tenant) == _ledger_totals(tenant=outsider.tenant)
    admin_drafts = UsageDaily.objects.filter(user=tenant_admin.user, task__code="LLM2_DRAFT")
    assert admin_drafts.count() == len({m for m in UsageLog.objects.filter(
        user=tenant_admin.user, task__code="LLM2_DRAFT").values_list("model_name", flat=True)})
    assert sum(admin_drafts.values_list("requests", flat=True)) == 2  # two calls upserted into the same day


def test_report_csv_matches_the_ledger(traffic, su_client, tenant_admin):
    today = timezone.now().date().isoformat()
    response = su_client.get("/console/reports/", {"from": today, "to": today, "group_by": "user",
                                                   "tenant": tenant_admin.tenant.slug, "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert f"usage_{tenant_admin.tenant.slug}_user_{today}_{today}.csv" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["user"] for r in rows] and {r["user"] for r in rows} == {"acme-admin", "acme-member"}
    for row in rows:
        wanted = _ledger_totals(tenant=tenant_admin.tenant, user__username=row["user"])
        assert int(row["requests"]) == wanted["requests"]
        assert int(row["tokens_in"]) == wanted["tokens_in"]
        assert int(row["tokens_out"]) == wanted["tokens_out"]
        assert int(row["total_tokens"]) == wanted["tokens_in"] + wanted["tokens_out"]
        assert int(row["cost_micro_usd"]) == wanted["cost_micro_usd"]
        assert row["cost_usd"] == f"{wanted['cost_micro_usd'] / 1_000_000:.6f}"


def test_report_across_tenants_by_tenant_and_by_task(traffic, su_client, tenant_admin, outsider):
    today = timezone.now().date().isoformat()
    response = su_client.get("/console/reports/", {"from": today, "to": today, "group_by": "tenant", "format": "csv"})
    rows = {r["tenant"]: r for r in csv.DictReader(io.StringIO(response.content.decode()))}
    assert set(rows) == {tenant_admin.tenant.slug, outsider.tenant.slug}
    assert int(rows[outsider.tenant.slug]["refused"]) == 1
    html = su_client.get("/console/reports/", {"from": today, "to": today, "group_by": "task"}).content.decode()
    assert "LLM2_DRAFT" in html and "LLM3_DIAGRAM" in html and 'id="report"' in html


def test_report_bad_input_is_explained(su_client, catalog):
    response = su_client.get("/console/reports/", {"from": "2026-02-01", "to": "2026-01-01"})
    assert "must not be after" in response.content.decode()
    response = su_client.get("/console/reports/", {"tenant": "nobody"})
    assert "No tenant with slug" in response.content.decode()
    response = su_client.get("/console/reports/", {"from": "2024-01-01", "to": "2026-01-01"})
    assert "at most 366 days" in response.content.decode()


def test_tenant_page_charts_and_user_table_show_the_traffic(traffic, su_client, tenant_admin):
    response = su_client.get(f"/console/tenants/{tenant_admin.tenant.slug}/")
    data = response.context["data"]
    assert {r["user"] for r in data["user_rows"]} == {"acme-admin", "acme-member"}
    assert sum(r["requests"] for r in data["user_rows"]) == 4
    html = response.content.decode()
    assert 'class="bar"' in html and 'class="line"' in html
    bars = {(b.key, b.task): b for b in data["tenant_bars"]}
    month = bars[("tenant_tokens_per_month", None)]
    assert month.used == _ledger_totals(tenant=tenant_admin.tenant)["tokens_in"] + _ledger_totals(
        tenant=tenant_admin.tenant)["tokens_out"]
    assert {b.label for b in data["user_bars"]} == {"acme-admin", "acme-member"}


def test_a_replayed_spool_record_reaches_the_rollup_exactly_once(tenant_admin, settings, tmp_path):
    from metering.models import UsageDaily as Daily
    from tests.metering.test_commands import _spool, evaluate, run, success

    settings.METERING_SPOOL_DIR = tmp_path / "spool"
    settings.METERING_SPOOL_REDIS_URL = ""  # the file spool, whose record this test rewrites
    now = timezone.now()
    decision = evaluate(tenant_admin.user, now=now)
    path = _spool(tenant_admin.user, "req-spooled-daily", decision, success(decision, tokens_out=120), now)
    record = path.read_text()
    run("replay_usage_spool")
    path.write_text(record)  # a crash between commit and delete: replayed again, counted once
    run("replay_usage_spool")
    row = Daily.objects.get(tenant=tenant_admin.tenant)
    assert (row.requests, row.tokens_in, row.tokens_out, row.day) == (1, 100, 120, now.date())
    assert _rollup_totals() == _ledger_totals()
