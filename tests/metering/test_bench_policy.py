"""`make bench-policy` (manage.py bench_policy): it measures the real hot path on PostgreSQL, prints
its floor, and leaves nothing behind. Its figures are read by people; here only their shape and
the clean-up are checked (timings are not asserted)."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.db import connection

from metering.bench import BENCH_SLUG
from metering.models import UsageLog, UsageMeter, UsageReservation
from metering.services import meters_reconcile
from tests.conftest import require_postgres


@pytest.fixture
def postgres(transactional_db, catalog):
    # Its worker threads use connections of their own: the data must be committed, not inside a
    # test's transaction.
    require_postgres()


def _run(*args: str) -> dict:
    out = io.StringIO()
    call_command("bench_policy", "--iterations", "20", "--threads", "2", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.postgres
def test_bench_policy_measures_every_phase_and_the_floor_and_leaves_no_rows(postgres):
    report = _run()
    assert report["database"] == "postgresql"
    for run in ("single_thread", "2_threads_same_tenant"):
        figures = report[run]
        assert figures["operations"] == 20
        for phase in ("policy", "admission", "settlement", "total"):
            assert 0 < figures[phase]["p50_us"] <= figures[phase]["p99_us"]
        assert figures["total"]["p50_us"] >= figures["admission"]["p50_us"]
    assert 0 < report["floor_two_writes"]["p50_us"] <= report["floor_two_writes"]["p99_us"]
    assert not UsageLog.objects.filter(tenant__slug=BENCH_SLUG).exists()
    assert not UsageReservation.objects.filter(tenant__slug=BENCH_SLUG).exists()
    assert not UsageMeter.objects.filter(tenant__slug=BENCH_SLUG).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bench_floor_%%'")
        assert cursor.fetchone()[0] == 0
    assert meters_reconcile() == []


@pytest.mark.postgres
def test_bench_policy_keep_leaves_one_ledger_row_per_operation_and_no_drift(postgres):
    _run("--keep")
    assert UsageLog.objects.filter(tenant__slug=BENCH_SLUG, status="SUCCESS").count() == 40
    assert not UsageReservation.objects.filter(tenant__slug=BENCH_SLUG, status="ACTIVE").exists()
    assert meters_reconcile() == []
