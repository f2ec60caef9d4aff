"""The Reconciliation page in headless Chromium after a real run: calls through the gateway, the fakes'
billing reports with one injected drift, the command, then the page (screenshot in test-artifacts/)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from tests.adminconsole.test_browser import browser, login, page, root, shot  # noqa: F401 (fixtures)
from tests.fakes.usage_reports import utc_today
from tests.llm.reconcile.conftest import MODELS, gateway_call, orgs  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_page_flags_the_drift_of_the_last_run(page, live_server, root, orgs, tenant_admin):  # noqa: F811
    def calls() -> list[int]:
        # Playwright's event loop owns this thread; the gateway's test client needs one without.
        try:
            return [gateway_call(tenant_admin, model) for model in MODELS.values()]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(calls).result() == [200, 200]
    for server in orgs.values():
        server.wait_idle()
    today = utc_today()
    yesterday = today - timedelta(days=1)
    orgs["anthropic"].report_extra(yesterday, MODELS["anthropic"], tokens_in=300_000, tokens_out=40_000)
    call_command("reconcile_provider_usage", "--provider", "openai", "--from", yesterday.isoformat(),
                 "--to", today.isoformat())
    with pytest.raises(CommandError):
        call_command("reconcile_provider_usage", "--provider", "anthropic", "--from", yesterday.isoformat(),
                     "--to", today.isoformat())

    login(page, live_server.url, "root-admin", next_url="/console/reconciliation/")
    assert page.url == f"{live_server.url}/console/reconciliation/"
    assert page.locator('[data-provider="openai"]').get_attribute("data-status") == "OK"
    anthropic = page.locator('[data-provider="anthropic"]')
    assert anthropic.get_attribute("data-status") == "DRIFT"
    assert "DRIFT" in anthropic.locator("h2").inner_text()
    metrics = [row.locator("td").nth(2).inner_text() for row in anthropic.locator("tr.drift-row").all()]
    assert set(metrics) == {"tokens_in", "tokens_out", "cost_micro_usd"}
    shot(page, "reconciliation-drift")
