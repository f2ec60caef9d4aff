"""How a report that cannot be read ends: a FAILED run with a clear, scrubbed reason, never a traceback."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from llm.reconcile.models import ProviderReconciliation
from tests.fakes.usage_reports import utc_today

pytestmark = pytest.mark.django_db


def reconcile(provider: str) -> tuple[dict, int]:
    out = StringIO()
    day = utc_today().isoformat()
    try:
        call_command("reconcile_provider_usage", "--provider", provider, "--from", day, "--to", day, "--json",
                     stdout=out)
        return json.loads(out.getvalue()), 0
    except CommandError as exc:
        return json.loads(out.getvalue()), exc.returncode


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_provider_error_is_a_failed_run_with_the_providers_scrubbed_text(orgs, provider):
    orgs[provider].fail_next(500, message="upstream billing store down (token=abc123secretvalue)")
    result, code = reconcile(provider)
    assert code == 1 and result["status"] == "FAILED"
    assert "answered 500" in result["message"] and "billing store down" in result["message"]
    assert "abc123secretvalue" not in result["message"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_malformed_report_is_a_failed_run(orgs, provider):
    orgs[provider].malformed_next()
    result, code = reconcile(provider)
    assert code == 1 and "did not answer JSON" in result["message"]
    assert ProviderReconciliation.objects.get().status == "FAILED"


def test_a_provider_that_is_down_is_a_failed_run_naming_where_it_went(orgs):
    orgs["openai"].go_down()
    result, code = reconcile("openai")
    assert code == 1 and "could not reach" in result["message"] and orgs["openai"].url in result["message"]
