"""usage_report and generate_usage, including bad input."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum
from django.utils import timezone

from metering.models import UsageDaily, UsageLog, UsageMeter
from metering.services import meters_reconcile
from tenants.models import Tenant, User

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def generated(catalog) -> Tenant:
    run("generate_usage", "--tenants", "2", "--days", "4", "--calls-per-day", "10", "--users-per-tenant", "2",
        "--prefix", "load")
    return Tenant.objects.get(slug="load-00001")


def test_generate_usage_writes_ledger_rollup_and_meters_that_agree(generated):
    assert Tenant.objects.filter(slug__startswith="load-").count() == 2
    assert User.objects.filter(tenant=generated).count() == 2
    assert User.objects.filter(tenant=generated, role="ADMIN").count() == 1
    assert UsageLog.objects.filter(tenant=generated).count() == 40
    assert generated.signup_ati_token.tenant_id == generated.pk
    ledger = UsageLog.objects.filter(tenant=generated)
    rollup = UsageDaily.objects.filter(tenant=generated)
    for field in ("tokens_in", "tokens_out", "api_calls", "cost_micro_usd"):
        assert ledger.aggregate(s=Sum(field))["s"] == rollup.aggregate(s=Sum(field))["s"], field
    assert ledger.exclude(status="REFUSED").count() == rollup.aggregate(s=Sum("requests"))["s"]
    now = timezone.now()
    month = UsageMeter.objects.get(tenant=generated, user=None, task=None, metric="TOKENS", window="MONTH")
    month_rows = ledger.exclude(status="REFUSED").filter(admitted_at__gte=month.period_start)
    assert month.used == sum(r.tokens_in + r.tokens_out for r in month_rows)
    assert all(r.admitted_at <= now for r in ledger)
    assert meters_reconcile() == []  # generated meters are all baseline: no drift against the ledger
    # A second run adds new tenants, never collides.
    run("generate_usage", "--tenants", "1", "--days", "1", "--prefix", "load")
    assert Tenant.objects.filter(slug="load-00003").exists()


def test_generate_usage_needs_a_catalog(db):
    with pytest.raises(CommandError, match="seed_catalog"):
        run("generate_usage", "--tenants", "1", "--days", "1")


@pytest.mark.parametrize("args", [["--tenants", "0", "--days", "1"], ["--tenants", "2", "--days", "-3"],
                                  ["--tenants", "x", "--days", "1"], ["--days", "1"]])
def test_generate_usage_bad_input(catalog, args):
    with pytest.raises(CommandError):
        run("generate_usage", *args)


def _dates():
    today = timezone.now().date()
    return (today - timedelta(days=10)).isoformat(), today.isoformat()


@pytest.mark.parametrize("group", ["task", "user", "model", "day"])
def test_usage_report_json_matches_the_ledger(generated, group):
    start, end = _dates()
    body = json.loads(run("usage_report", "--tenant", generated.slug, "--from", start, "--to", end,
                          "--group-by", group, "--format", "json"))
    assert body["tenant"] == generated.slug and body["group_by"] == group
    ledger = UsageLog.objects.filter(tenant=generated)
    assert sum(r["total_tokens"] for r in body["rows"]) == sum(r.tokens_in + r.tokens_out for r in ledger)
    assert sum(r["requests"] + r["refused"] for r in body["rows"]) == ledger.count()
    if group == "day":
        assert len(body["rows"]) == 4
    if group == "user":
        assert {r["user"] for r in body["rows"]} <= {"load-00001-u0", "load-00001-u1"}


def test_usage_report_csv_and_table(generated):
    start, end = _dates()
    rows = list(csv.DictReader(io.StringIO(run("usage_report", "--tenant", generated.slug, "--from", start,
                                               "--to", end, "--format", "csv"))))
    assert rows and set(rows[0]) == {"task", "requests", "refused", "tokens_in", "tokens_out", "total_tokens",
                                     "tokens_cached_in", "tokens_cache_write", "api_calls", "cost_micro_usd",
                                     "cost_usd"}
    table = run("usage_report", "--tenant", generated.slug, "--from", start, "--to", end, "--group-by", "day")
    assert f"Usage of {generated.slug}" in table and "TOTAL" in table
    empty = run("usage_report", "--tenant", generated.slug, "--from", "2001-01-01", "--to", "2001-01-31")
    assert "No usage in this period." in empty


@pytest.mark.parametrize("args, message", [
    (["--tenant", "nobody", "--from", "2026-01-01", "--to", "2026-01-02"], "No tenant with slug 'nobody'"),
    (["--tenant", "load-00001", "--from", "2026-02-01", "--to", "2026-01-01"], "must not be after"),
    (["--tenant", "load-00001", "--from", "yesterday", "--to", "2026-01-01"], "date (YYYY-MM-DD)"),
    (["--tenant", "load-00001", "--from", "2026-01-01", "--to", "2026-01-02", "--group-by", "moon"], "invalid choice"),
    (["--tenant", "load-00001", "--from", "2026-01-01", "--to", "2026-01-02", "--format", "xml"], "invalid choice"),
    (["--tenant", "load-00001", "--to", "2026-01-02"], "--from"),
])
def test_usage_report_bad_input(generated, args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run("usage_report", *args)


def test_bench_console_times_every_page(generated):
    out = run("bench_console", "--repeat", "1")
    lines = out.splitlines()
    assert "2 tenants" in lines[0] and "tenant page for load-00001" in lines[0]
    pages = [line.split("  ")[0] for line in lines[2:]]
    assert pages[:3] == ["overview", "tenants", "tenant page"] and len(pages) == 11
