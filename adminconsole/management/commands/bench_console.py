"""Time every console page against the current database (e.g. after `generate_usage --tenants 1000 --days 365`).

    DATABASE_URL=postgres://... manage.py bench_console [--repeat 5] [--tenant SLUG]

Each page is requested in-process through Django's test client as a super admin; the report shows
the median and worst wall time and the number of SQL queries of each page.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metering.models import UsageDaily, UsageLog
from tenants.models import Tenant, User


class Command(BaseCommand):
    help = "Median / worst time and query count of each console page on this database."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--repeat", type=int, default=5)
        parser.add_argument("--tenant", help="Tenant slug for the tenant page (default: the busiest generated one).")

    def handle(self, *args, **options) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first() if options["tenant"] else (
            Tenant.objects.filter(slug__startswith="gen-").order_by("slug").first() or Tenant.objects.first())
        if tenant is None:
            raise CommandError("No tenant: run generate_usage first.")
        user, _ = User.objects.get_or_create(username="bench-console-admin",
                                             defaults={"is_staff": True, "is_superuser": True})
        client = Client()
        client.force_login(user)
        today = timezone.now().date()
        year_ago, month_ago = today - timedelta(days=364), today - timedelta(days=29)
        pages = [
            ("overview", "/console/"),
            ("tenants", "/console/tenants/"),
            ("tenant page", f"/console/tenants/{tenant.slug}/"),
            ("plan changes", "/console/plan-changes/"),
            ("plan matrix", "/console/plans/"),
            ("quota requests", "/console/quota-requests/"),
            ("audit log", "/console/audit/"),
            ("report: month by tenant", "/console/reports/"),
            ("report: 1 tenant, year by day",
             f"/console/reports/?tenant={tenant.slug}&group_by=day&from={year_ago}&to={today}"),
            ("report: all, 30 d by model",
             f"/console/reports/?group_by=model&from={month_ago}&to={today}"),
            ("report: all, year by tenant (CSV)",
             f"/console/reports/?group_by=tenant&from={year_ago}&to={today}&format=csv"),
        ]
        self.stdout.write(f"{connection.vendor}: {Tenant.objects.count():,} tenants, "
                          f"~{_estimate(UsageLog):,} ledger rows, ~{_estimate(UsageDaily):,} rollup rows; "
                          f"tenant page for {tenant.slug}; {options['repeat']} runs each")
        self.stdout.write(f"{'page':36} {'median ms':>10} {'worst ms':>10} {'queries':>8} {'bytes':>9}")
        for name, url in pages:
            client.get(url)  # warm caches
            times, queries, size = [], 0, 0
            for _ in range(options["repeat"]):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise CommandError(f"{url} answered {response.status_code}")
                queries, size = len(captured), len(response.content)
            self.stdout.write(f"{name:36} {statistics.median(times):>10.0f} {max(times):>10.0f} {queries:>8} "
                              f"{size:>9,}")


def _estimate(model) -> int:
    """The planner's row estimate on PostgreSQL (a COUNT(*) of the ledger is the scan we avoid)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [model._meta.db_table])
            row = cursor.fetchone()
            if row and row[0] > 0:
                return row[0]
    return model.objects.count()
