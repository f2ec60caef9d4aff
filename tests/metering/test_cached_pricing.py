"""Cached prompt tokens, priced as the providers bill them (issue 13 §4).

- the one price rule (catalog/pricing.py), against hand-computed price-sheet figures;
- parity per provider: each real SDK against its loopback fake reporting cache hits (and, for
  Anthropic, cache writes), plain and streamed; the ledger row's cost equals the provider's
  published price sheet applied to the usage the provider reported, to the micro-dollar, and the
  counts reach the daily rollup, /api/usage/ and the ledger API;
- both settlement implementations (Python and the PostgreSQL function) write the same cached counts.
"""

from __future__ import annotations

import json
from decimal import ROUND_CEILING, Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from catalog import pricing
from catalog.models import ProviderModel
from metering import services
from metering.models import UsageDaily, UsageLog
from metering.services import meters_reconcile
from tests.conftest import require_postgres

TASK = "LLM1_PRIOR_ART"  # PRO: BASE_S (gpt-4o-mini) and BASE_M (gemini-2.5-flash, grok-3-mini, claude-haiku-4-5)
MODELS = {"openai": "gpt-4o-mini", "grok": "grok-3-mini", "gemini": "gemini-2.5-flash",
          "anthropic": "claude-haiku-4-5"}

# The providers' published price sheets, USD per million tokens: input, cached input (cache hit),
# cache write, output. Written here independently of the catalog's integer micro-USD seed.
PRICE_SHEET = {
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.075"), Decimal("0.15"), Decimal("0.60")),
    "grok-3-mini": (Decimal("0.30"), Decimal("0.075"), Decimal("0.30"), Decimal("0.50")),
    "gemini-2.5-flash": (Decimal("0.30"), Decimal("0.03"), Decimal("0.30"), Decimal("2.50")),
    "claude-haiku-4-5": (Decimal("1.00"), Decimal("0.10"), Decimal("1.25"), Decimal("5.00")),
}


def sheet_cost_micro_usd(model: str, *, prompt: int, cached: int, written: int, output: int) -> int:
    """The price sheet applied to reported usage (prompt = all prompt tokens), in micro-USD, rounded up."""
    price_in, price_cached, price_write, price_out = PRICE_SHEET[model]
    usd = ((prompt - cached - written) * price_in + cached * price_cached + written * price_write
           + output * price_out) / 1_000_000
    return int((usd * 1_000_000).to_integral_value(rounding=ROUND_CEILING))


# --- the rule -------------------------------------------------------------------------------------


def test_the_rule_prices_each_part_of_the_prompt_at_its_own_rate():
    # claude-sonnet-4-5: $3 input, $0.30 cache hit, $3.75 cache write, $15 output per MTok.
    cost = pricing.cost_micro_usd(tokens_in=10_000, tokens_out=500, tokens_cached_in=6_000, tokens_cache_write=3_000,
                                  input_price=3_000_000, output_price=15_000_000, cached_input_price=300_000,
                                  cache_write_price=3_750_000)
    # 1000 x 3 + 6000 x 0.30 + 3000 x 3.75 + 500 x 15 = 3000 + 1800 + 11250 + 7500 micro-USD
    assert cost == 23_550


def test_the_rule_rounds_once_up_to_the_next_micro_dollar():
    # 1 uncached + 1 cached token on gpt-4o-mini: 0.15 + 0.075 = 0.225 micro-USD -> 1 (not 1 + 1).
    assert pricing.cost_micro_usd(tokens_in=2, tokens_out=0, tokens_cached_in=1, input_price=150_000,
                                  output_price=600_000, cached_input_price=75_000) == 1
    assert pricing.cost_micro_usd(tokens_in=0, tokens_out=0, input_price=150_000, output_price=600_000) == 0


def test_no_cache_price_means_the_input_price_never_a_free_token():
    plain = pricing.cost_micro_usd(tokens_in=1_000, tokens_out=10, input_price=2_500_000, output_price=10_000_000)
    assert pricing.cost_micro_usd(tokens_in=1_000, tokens_out=10, tokens_cached_in=400, tokens_cache_write=300,
                                  input_price=2_500_000, output_price=10_000_000) == plain == 2_600


def test_reported_cache_counts_beyond_the_prompt_are_clamped_into_it():
    # A provider reporting more cached tokens than prompt tokens cannot make the uncached part negative.
    assert pricing.cost_micro_usd(tokens_in=100, tokens_out=0, tokens_cached_in=500, tokens_cache_write=50,
                                  input_price=1_000_000, output_price=0, cached_input_price=100_000,
                                  cache_write_price=1_250_000) == 10  # 100 cached x 0.10
    assert pricing.cost_micro_usd(tokens_in=100, tokens_out=0, tokens_cached_in=-5, input_price=1_000_000,
                                  output_price=0, cached_input_price=0) == 100


@pytest.mark.django_db
def test_worst_case_hold_covers_a_prompt_written_to_the_cache(catalog):
    from catalog.selectors import provider_models_active

    haiku = next(m for m in provider_models_active() if m.model_name == "claude-haiku-4-5")
    # A cache write costs 1.25x input: the hold prices every counted prompt token at the dearest rate.
    assert haiku.worst_cost_micro_usd(tokens_in=1_000, tokens_out=100) == 1_250 + 500
    assert haiku.cost_micro_usd(tokens_in=1_000, tokens_out=100, tokens_cache_write=1_000) == 1_750
    assert haiku.cost_micro_usd(tokens_in=1_000, tokens_out=100) == 1_500


@pytest.mark.django_db
def test_seed_sets_the_published_cache_rates_explicitly(catalog):
    rows = {m.model_name: m for m in ProviderModel.objects.all()}
    for model, (price_in, price_cached, price_write, price_out) in PRICE_SHEET.items():
        row = rows[model]
        assert (row.input_price_per_mtok_micro_usd, row.cached_input_price_per_mtok_micro_usd,
                row.cache_write_price_per_mtok_micro_usd, row.output_price_per_mtok_micro_usd) == tuple(
            int(p * 1_000_000) for p in (price_in, price_cached, price_write, price_out))
    assert rows["claude-opus-4-1"].cache_write_price_per_mtok_micro_usd == 18_750_000
    assert rows["offline-base-s"].cached_input_price_per_mtok_micro_usd is None  # no published rate: input price
    call_command("seed_catalog", verbosity=0)  # a re-run changes nothing
    assert ProviderModel.objects.get(model_name="gpt-4o").cached_input_price_per_mtok_micro_usd == 1_250_000


# --- parity per provider, through the real SDKs and the fakes ----------------------------------------




PROMPT = " ".join(["The claimed invention relates to a fastening device for panels."] * 12)


def _call(persona, model: str, *, stream: bool):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    response = persona.client.post(f"/v1/{TASK}/chat/completions", body, format="json")
    assert response.status_code == 200
    if stream:
        raw = b"".join(response).decode()
        return [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]
    return response.json()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("provider", list(MODELS))
def test_ledger_cost_is_the_price_sheet_applied_to_reported_usage(fakes, tenant_admin, provider, stream):
    server, model = fakes[provider], MODELS[provider]
    server.cached_tokens = 60
    if provider == "anthropic":
        server.cache_write_tokens = 25
    _call(tenant_admin, model, stream=stream)
    (log,) = UsageLog.objects.all()
    assert log.model_name == model and not log.usage_estimated
    written = 25 if provider == "anthropic" else 0
    assert (log.tokens_cached_in, log.tokens_cache_write) == (60, written)
    # tokens_in is every prompt token the provider read, cached ones included.
    server.wait_idle()
    assert log.tokens_in == server.billed[0][1]
    assert log.cost_micro_usd == sheet_cost_micro_usd(model, prompt=log.tokens_in, cached=60, written=written,
                                                      output=log.tokens_out)
    # Not what the same usage would have cost uncached: the discount (or surcharge) is real.
    assert log.cost_micro_usd != sheet_cost_micro_usd(model, prompt=log.tokens_in, cached=0, written=0,
                                                      output=log.tokens_out)
    (daily,) = UsageDaily.objects.filter(tenant=tenant_admin.tenant)
    assert (daily.tokens_in, daily.tokens_cached_in, daily.tokens_cache_write, daily.cost_micro_usd) == (
        log.tokens_in, 60, written, log.cost_micro_usd)
    assert meters_reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_usage_api_and_ledger_api_show_the_cached_tokens(fakes, tenant_admin, member, outsider):
    fakes["anthropic"].cached_tokens, fakes["anthropic"].cache_write_tokens = 50, 10
    _call(member, MODELS["anthropic"], stream=False)
    fakes["openai"].cached_tokens = 30
    _call(member, MODELS["openai"], stream=True)
    today = timezone.now().date().isoformat()
    usage = tenant_admin.django_client.get(f"/api/usage/?from={today}&to={today}&group_by=model").json()
    by_model = {row["model"]: row for row in usage["results"]}
    assert (by_model["claude-haiku-4-5"]["tokens_cached_in"], by_model["claude-haiku-4-5"]["tokens_cache_write"]) \
        == (50, 10)
    assert (by_model["gpt-4o-mini"]["tokens_cached_in"], by_model["gpt-4o-mini"]["tokens_cache_write"]) == (30, 0)
    logs = member.django_client.get("/api/usage/logs/").json()["results"]
    assert sorted((r["model_name"], r["tokens_cached_in"], r["tokens_cache_write"]) for r in logs) == [
        ("claude-haiku-4-5", 50, 10), ("gpt-4o-mini", 30, 0)]
    # Another tenant sees none of it.
    theirs = outsider.django_client.get(f"/api/usage/?from={today}&to={today}&group_by=model").json()
    assert theirs["results"] == []
    assert outsider.django_client.get("/api/usage/logs/").json()["results"] == []


@pytest.mark.django_db(transaction=True)
def test_usage_report_command_carries_the_cached_columns(fakes, tenant_admin):
    from io import StringIO

    fakes["gemini"].cached_tokens = 40
    _call(tenant_admin, MODELS["gemini"], stream=False)
    today = timezone.now().date().isoformat()
    out = StringIO()
    call_command("usage_report", "--tenant", tenant_admin.tenant.slug, "--from", today, "--to", today,
                 "--group-by", "model", "--format", "json", stdout=out)
    (row,) = json.loads(out.getvalue())["rows"]
    assert (row["model"], row["tokens_cached_in"], row["tokens_cache_write"]) == ("gemini-2.5-flash", 40, 0)
    assert row["cost_micro_usd"] == UsageLog.objects.get().cost_micro_usd


# --- both settlement implementations --------------------------------------------------------------


def _settle_cached(user) -> UsageLog:
    from metering.policy import policy_evaluate
    from tenants.selectors import identity_resolve

    context = identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=user.tenant.signup_ati_token_id)
    now = timezone.now()
    decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", tokens_in=100, requested_max_tokens_out=50,
                               now=now, mode="HARD")
    admission = services.usage_admit(tenant_id=user.tenant_id, user_id=user.pk, decision=decision,
                                     request_id="req-cached", mode="HARD", now=now)
    outcome = services.CallOutcome(status="SUCCESS", provider="anthropic", model_name="claude-sonnet-4-5",
                                   model_class="PRO_L", tokens_in=100, tokens_out=20, tokens_cached_in=70,
                                   tokens_cache_write=20, cost_micro_usd=456, api_calls=1)
    return services.usage_settle(reservation_id=admission.reservation_id, outcome=outcome)


def _assert_written(user) -> None:
    log = UsageLog.objects.get(request_id="req-cached")
    assert (log.tokens_in, log.tokens_cached_in, log.tokens_cache_write, log.cost_micro_usd) == (100, 70, 20, 456)
    daily = UsageDaily.objects.get(tenant_id=user.tenant_id, model_name="claude-sonnet-4-5")
    assert (daily.tokens_in, daily.tokens_cached_in, daily.tokens_cache_write) == (100, 70, 20)
    assert meters_reconcile() == []


@pytest.mark.django_db
def test_python_settlement_writes_the_cached_counts(tenant_admin, settings):
    from django.db import connection

    if connection.vendor == "postgresql":
        settings.METERING_HOLDS_BACKEND = "python"
    log = _settle_cached(tenant_admin.user)
    assert (log.tokens_cached_in, log.tokens_cache_write) == (70, 20)
    _assert_written(tenant_admin.user)


@pytest.mark.postgres
@pytest.mark.django_db
def test_postgres_settlement_writes_the_cached_counts(tenant_admin, settings):
    require_postgres()
    settings.METERING_HOLDS_BACKEND = ""
    log = _settle_cached(tenant_admin.user)
    assert (log.tokens_cached_in, log.tokens_cache_write) == (70, 20)
    _assert_written(tenant_admin.user)


@pytest.mark.django_db
def test_spooled_usage_keeps_the_cached_counts(tenant_admin, settings, tmp_path):
    from metering import spool

    settings.METERING_SPOOL_DIR, settings.METERING_SPOOL_REDIS_URL = tmp_path, ""  # the file spool
    user = tenant_admin.user
    from metering.policy import policy_evaluate
    from tenants.selectors import identity_resolve

    context = identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=user.tenant.signup_ati_token_id)
    now = timezone.now()
    decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", tokens_in=100, requested_max_tokens_out=50,
                               now=now, mode="HARD")
    outcome = services.CallOutcome(status="SUCCESS", provider="openai", model_name="gpt-4o", model_class="PRO_M",
                                   tokens_in=100, tokens_out=20, tokens_cached_in=64, cost_micro_usd=330, api_calls=1)
    spool.spool_write(request_id="req-spooled", tenant_id=user.tenant_id, user_id=user.pk,
                      task_id=decision.task.id, feature_code=decision.task.feature_code, mode="HARD",
                      admitted_at=now, holds=decision.holds, outcome=outcome)
    spool.spool_replay()
    log = UsageLog.objects.get(request_id="req-spooled")
    assert (log.tokens_in, log.tokens_cached_in, log.tokens_cache_write, log.cost_micro_usd) == (100, 64, 0, 330)
