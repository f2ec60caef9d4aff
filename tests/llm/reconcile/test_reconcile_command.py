"""`manage.py reconcile_provider_usage` against loopback fakes of OpenAI's and Anthropic's organisation
usage and cost reports, after real calls through the gateway (so the ledger is the real one)."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import CommandError, call_command

from llm.reconcile.models import ProviderAdminCredential, ProviderReconciliation
from metering.models import UsageLog
from tenants.models import User
from tests.fakes.usage_reports import utc_today
from tests.llm.reconcile.conftest import MODELS, SNAPSHOTS, gateway_call

pytestmark = pytest.mark.django_db

PROVIDERS = list(MODELS)
REPORT_PATHS = {"openai": ("/v1/organization/usage/completions", "/v1/organization/costs"),
                "anthropic": ("/v1/organizations/usage_report/messages", "/v1/organizations/cost_report")}


def reconcile(provider: str, day_from, day_to) -> tuple[dict, int]:
    out = StringIO()
    try:
        call_command("reconcile_provider_usage", "--provider", provider, "--from", day_from.isoformat(),
                     "--to", day_to.isoformat(), "--json", stdout=out)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return json.loads(out.getvalue()), code


def traffic(persona, provider: str) -> None:
    statuses = [gateway_call(persona, MODELS[provider]),
                gateway_call(persona, MODELS[provider], content="Summarise claim 1 of a hinge patent"),
                gateway_call(persona, MODELS[provider], stream=True)]
    assert statuses == [200, 200, 200]


@pytest.fixture
def superadmin(db) -> User:
    return User.objects.create_superuser(username="root", email="root@example.com", password="x-Very-long-42")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_zero_drift_when_the_provider_billed_exactly_the_calls_the_gateway_made(orgs, tenant_admin, provider):
    traffic(tenant_admin, provider)
    orgs[provider].wait_idle()
    today = utc_today()

    result, code = reconcile(provider, today - timedelta(days=2), today)

    assert code == 0 and result["status"] == "OK", result
    assert result["rows_drifted"] == 0 and len(result["rows"]) == 1
    row = result["rows"][0]
    # The provider reports dated snapshot names; the comparison is under the catalog's name.
    assert row["model"] == MODELS[provider] and row["provider_models"] == [SNAPSHOTS[MODELS[provider]]]
    logs = UsageLog.objects.filter(model_name=MODELS[provider])
    assert row["tokens_in"]["ledger"] == row["tokens_in"]["provider"] == sum(log.tokens_in for log in logs)
    assert row["tokens_out"]["ledger"] == row["tokens_out"]["provider"] == sum(log.tokens_out for log in logs)
    if provider == "openai":
        assert row["requests"] == {"ledger": 3, "provider": 3, "diff": 0}
    else:  # Anthropic's usage report has no request count: shown, not compared
        assert row["requests"]["provider"] is None and result["not_reported"] == ["requests"]
    # The ledger rounds each call up to the micro-dollar; the provider sums first.
    assert 0 <= row["cost_micro_usd"]["ledger"] - row["cost_micro_usd"]["provider"] <= 3
    assert row["cost_micro_usd"]["provider"] > 0
    # Three days at one bucket per page: the client followed next_page on both reports.
    usage_path, cost_path = REPORT_PATHS[provider]
    gets = [r for r in orgs[provider].received if r.body is None]
    assert sum(r.path.startswith(usage_path) for r in gets) == 3
    assert sum(r.path.startswith(cost_path) for r in gets) == 3
    assert sum("page=" in r.path for r in gets) == 4
    run = ProviderReconciliation.objects.get()
    assert (run.status, run.rows_total, run.alerted_at) == ("OK", 1, None)
    assert len(mail.outbox) == 0


@pytest.mark.django_db(transaction=True)  # the alert goes out when the run commits, as in production
@pytest.mark.parametrize("provider", PROVIDERS)
def test_injected_drift_is_flagged_per_day_and_model_and_super_admins_are_alerted(orgs, tenant_admin, superadmin,
                                                                                  provider):
    traffic(tenant_admin, provider)
    orgs[provider].wait_idle()
    today = utc_today()
    yesterday = today - timedelta(days=1)
    # Yesterday someone used the platform's key outside the gateway: the provider billed it, the ledger has none.
    orgs[provider].report_extra(yesterday, MODELS[provider], requests=4, tokens_in=200_000, tokens_out=20_000)

    result, code = reconcile(provider, yesterday, today)

    assert code == 4 and result["status"] == "DRIFT", result
    rows = {r["day"]: r for r in result["rows"]}
    assert set(rows) == {yesterday.isoformat(), today.isoformat()}
    assert rows[today.isoformat()]["drifted"] == []  # the day without drift
    drifted = rows[yesterday.isoformat()]
    expected = {"tokens_in", "tokens_out", "cost_micro_usd"} | ({"requests"} if provider == "openai" else set())
    assert set(drifted["drifted"]) == expected
    assert drifted["tokens_in"] == {"ledger": 0, "provider": 200_000, "diff": 200_000}
    run = ProviderReconciliation.objects.get()
    assert (run.status, run.rows_drifted, run.rows_total) == ("DRIFT", 1, 2)
    assert run.alerted_at is not None and result["alerted"] is True
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["root@example.com"]
    assert provider in mail.outbox[0].subject and f"{yesterday} {MODELS[provider]}" in mail.outbox[0].body


def test_a_small_difference_under_the_threshold_is_not_drift(orgs, tenant_admin, settings):
    traffic(tenant_admin, "openai")
    orgs["openai"].wait_idle()
    today = utc_today()
    orgs["openai"].report_extra(today, MODELS["openai"], tokens_in=50)  # under RECONCILE_DRIFT_TOKENS (100)
    result, code = reconcile("openai", today, today)
    assert code == 0 and result["rows"][0]["tokens_in"]["diff"] == 50 and result["rows"][0]["drifted"] == []
    settings.RECONCILE_DRIFT_TOKENS = 10
    result, code = reconcile("openai", today, today)
    assert code == 4 and result["rows"][0]["drifted"] == ["tokens_in"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_admin_key_is_a_clear_failure_that_never_shows_the_key(orgs, settings, provider, capsys):
    wrong = f"sk-admin-{'ant-' if provider == 'anthropic' else ''}WRONGkey-9876543210fedcba"
    setattr(settings, f"{provider.upper()}_ADMIN_API_KEY", wrong)
    today = utc_today()

    result, code = reconcile(provider, today, today)

    assert code == 1 and result["status"] == "FAILED"
    assert "refused the admin key (401)" in result["message"]
    run = ProviderReconciliation.objects.get()
    everything = json.dumps(result) + run.message + capsys.readouterr().err
    assert wrong not in everything and "WRONGkey" not in everything
    if provider == "openai":  # OpenAI quotes the key back; the message keeps the rest of its text
        assert "Incorrect API key provided: [redacted]" in run.message


def test_no_admin_key_says_where_to_put_one(orgs, settings):
    settings.OPENAI_ADMIN_API_KEY = ""
    result, code = reconcile("openai", utc_today(), utc_today())
    assert code == 1 and "OPENAI_ADMIN_API_KEY" in result["message"]
    assert orgs["openai"].received == []  # nothing was sent without a key


def test_an_encrypted_admin_credential_is_used_when_the_environment_has_none(orgs, tenant_admin, settings):
    traffic(tenant_admin, "anthropic")
    orgs["anthropic"].wait_idle()
    settings.ANTHROPIC_ADMIN_API_KEY = ""
    credential = ProviderAdminCredential(provider="anthropic", label="org admin")
    credential.set_admin_key(orgs["anthropic"].admin_key)
    credential.save()
    assert orgs["anthropic"].admin_key not in credential.encrypted_admin_key

    result, code = reconcile("anthropic", utc_today(), utc_today())

    assert code == 0 and result["status"] == "OK"
    sent = [r.headers for r in orgs["anthropic"].received if r.body is None]
    assert sent and all(h["x-api-key"] == orgs["anthropic"].admin_key and h["anthropic-version"] for h in sent)


@pytest.mark.parametrize("provider", ["gemini", "grok"])
def test_providers_without_a_usage_report_say_so_and_record_nothing(db, provider):
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("reconcile_provider_usage", "--provider", provider, "--from", "2026-11-01", "--to",
                     "2026-11-02", "--json", stdout=out)
    assert caught.value.returncode == 3
    body = json.loads(out.getvalue())
    assert body["status"] == "UNSUPPORTED"
    assert ("Cloud Billing" if provider == "gemini" else "Management API") in body["message"]
    assert not ProviderReconciliation.objects.exists()


def test_bad_ranges_are_refused(db):
    with pytest.raises(CommandError, match="before"):
        call_command("reconcile_provider_usage", "--provider", "openai", "--from", "2026-11-02", "--to", "2026-11-01")
    with pytest.raises(CommandError, match="at most"):
        call_command("reconcile_provider_usage", "--provider", "openai", "--from", "2024-01-01", "--to", "2026-01-01")
    with pytest.raises(CommandError, match="not a day"):
        call_command("reconcile_provider_usage", "--provider", "openai", "--from", "yesterday", "--to", "2026-01-01")


def test_the_table_output_shows_each_figure(orgs, tenant_admin):
    traffic(tenant_admin, "openai")
    orgs["openai"].wait_idle()
    out = StringIO()
    call_command("reconcile_provider_usage", "--provider", "openai", "--from", utc_today().isoformat(),
                 "--to", utc_today().isoformat(), stdout=out)
    text = out.getvalue()
    assert "no drift" in text and "gpt-4o-mini" in text and "3/3" in text


def test_the_active_provider_credentials_base_url_is_where_the_report_is_read(orgs, settings):
    from llm.models import ProviderCredential

    settings.OPENAI_BASE_URL = ""
    credential = ProviderCredential(provider="openai", label="via proxy", base_url=orgs["openai"].url + "/v1")
    credential.set_api_key("test-key")
    credential.save()
    result, code = reconcile("openai", utc_today(), utc_today())
    assert code == 0 and result["status"] == "OK"
    assert any(r.path.startswith("/v1/organization/usage/completions") for r in orgs["openai"].received)
