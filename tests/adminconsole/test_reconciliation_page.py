"""The console's Reconciliation page: the last run per provider, drift flagged; staff only."""

from __future__ import annotations

from datetime import date

import pytest
from django.utils import timezone

from llm.reconcile.models import ProviderReconciliation, ProviderReconciliationRow

pytestmark = pytest.mark.django_db


def _run(provider: str, status: str, *, drifted: list[str] | None = None, message: str = "") -> ProviderReconciliation:
    now = timezone.now()
    run = ProviderReconciliation.objects.create(
        provider=provider, day_from=date(2026, 11, 30), day_to=date(2026, 12, 1), status=status, message=message,
        rows_total=1, rows_drifted=1 if drifted else 0, started_at=now, finished_at=now,
        thresholds={"percent": 1.0, "requests": 0, "tokens": 100, "micro_usd": 10000})
    ProviderReconciliationRow.objects.create(
        run=run, day=date(2026, 11, 30), model_name="gpt-4o-mini", ledger_tokens_in=1000,
        provider_tokens_in=250_000 if drifted else 1000, drifted=drifted or [])
    return run


def test_the_page_shows_the_last_run_per_provider_and_flags_drift(su_client):
    _run("openai", "DRIFT", drifted=["tokens_in"])  # older
    _run("openai", "OK")  # the last one
    _run("anthropic", "DRIFT", drifted=["tokens_in"])

    response = su_client.get("/console/reconciliation/")

    assert response.status_code == 200
    latest = {e["provider"]: e for e in response.context["latest"]}
    assert latest["openai"]["run"].status == "OK" and latest["openai"]["drifted_rows"] == []
    assert latest["anthropic"]["run"].status == "DRIFT"
    html = response.content.decode()
    assert 'data-provider="anthropic" data-status="DRIFT"' in html
    assert 'data-provider="openai" data-status="OK"' in html
    assert "249,000" in html  # the drifted figure's difference
    assert "gemini" in html and "grok" in html  # why those are not reconciled


def test_a_failed_run_shows_its_scrubbed_message(su_client):
    _run("openai", "FAILED", message="openai refused the admin key (401): Incorrect API key provided: [redacted].")
    html = su_client.get("/console/reconciliation/").content.decode()
    assert 'data-status="FAILED"' in html and "[redacted]" in html


def test_read_only_staff_see_it_and_tenant_users_do_not(staff_client, tenant_admin):
    assert staff_client.get("/console/reconciliation/").status_code == 200
    outsider = tenant_admin.django_client
    outsider.force_login(tenant_admin.user)
    response = outsider.get("/console/reconciliation/")
    assert response.status_code in (302, 403)
