"""A tenant for benchmarks: limits high enough that a benchmark measures the path, not refusals."""

from __future__ import annotations

import uuid

from django.db import connection

from catalog.models import Task
from metering.alerts.models import QuotaAlert
from metering.models import UsageDaily, UsageHold, UsageLog, UsageMeter, UsageReservation
from metering.services import policy_rule_set
from tenants import services as tenant_services
from tenants.models import Tenant, User

BENCH_SLUG = "bench-tenant"


def bench_tenant_user() -> User:
    tenant = Tenant.objects.filter(slug=BENCH_SLUG).first()
    if tenant is None:
        issued = tenant_services.ati_token_issue(plan_code="PRO", note="benchmark")
        tenant, _ = tenant_services.tenant_signup(
            ati_secret=issued.secret, tenant_name="Bench Tenant", username=f"bench-{uuid.uuid4().hex[:8]}",
            email="bench@example.invalid", password=uuid.uuid4().hex,
        )
        tenant.slug = BENCH_SLUG
        tenant.save(update_fields=["slug"])
    for key, value in (("tenant_tokens_per_day", 10**15), ("tenant_tokens_per_month", 10**15),
                       ("user_tokens_per_month", 10**15), ("tenant_cost_per_month_usd", "1000000000"),
                       ("tenant_api_calls_per_month", 10**15), ("tenant_rpm", 10**9), ("user_rpm", 10**9)):
        policy_rule_set(scope="TENANT", tenant=tenant, key=key, value=value)
    for task in Task.objects.all():
        policy_rule_set(scope="TENANT", tenant=tenant, task=task, key="max_concurrent", value=10**6)
    return User.objects.filter(tenant=tenant).select_related("tenant").first()


def bench_data_delete(tenant: Tenant) -> None:
    UsageLog.objects.filter(tenant=tenant).delete()
    UsageReservation.objects.filter(tenant=tenant).delete()
    UsageMeter.objects.filter(tenant=tenant).delete()


def bench_tables_vacuum() -> None:
    """Start from tables without the dead rows of earlier runs, as pgbench does (its default): each
    benchmark run deletes what it wrote, and on a server with autovacuum off (this machine's) the
    dead rows pile up across runs and slow every index probe. PostgreSQL only."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for model in (UsageMeter, UsageReservation, UsageHold, UsageLog, UsageDaily, QuotaAlert):
            cursor.execute(f"VACUUM {model._meta.db_table}")
