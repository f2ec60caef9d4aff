"""Prompt-cache tokens reconciled: what the providers reported as cache reads (and, for Anthropic, cache
writes) on each call is what the ledger's rollup holds and what their usage reports show; costs priced
at the catalog's cache rates match too."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from tests.fakes.usage_reports import utc_today
from tests.llm.reconcile.conftest import MODELS, gateway_call

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("provider", list(MODELS))
def test_cached_and_cache_write_tokens_match_with_zero_drift(orgs, tenant_admin, settings, provider):
    server = orgs[provider]
    server.cached_tokens = 8
    if provider == "anthropic":
        server.cache_write_tokens = 3
    content = "Summarise the prior art on folding hinges for portable computers in one paragraph"
    assert [gateway_call(tenant_admin, MODELS[provider], content=content, stream=s) for s in (False, True)] == \
        [200, 200]
    server.wait_idle()
    settings.RECONCILE_DRIFT_TOKENS = 0  # every token counts
    out = StringIO()
    call_command("reconcile_provider_usage", "--provider", provider, "--from", utc_today().isoformat(),
                 "--to", utc_today().isoformat(), "--json", stdout=out)
    result = json.loads(out.getvalue())
    (row,) = result["rows"]
    assert result["status"] == "OK" and row["drifted"] == []
    assert row["tokens_cached_in"] == {"ledger": 16, "provider": 16, "diff": 0}
    if provider == "anthropic":
        assert row["tokens_cache_write"] == {"ledger": 6, "provider": 6, "diff": 0}
    else:  # OpenAI's usage report has no cache-write figure
        assert row["tokens_cache_write"]["provider"] is None
    assert 0 <= row["cost_micro_usd"]["ledger"] - row["cost_micro_usd"]["provider"] <= 2
