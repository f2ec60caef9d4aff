"""Budget fitting (issue 12 item 5): a call whose worst case no longer fits the tightest remaining
quota gets a smaller max_tokens instead of a refusal, down to `fit_min_max_tokens`; the response
says so (X-Gateway-Warning) and so does its ledger row (max_tokens_fitted). Through the public API,
with the embedded offline provider; the exactness of the arithmetic at the policy layer."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from catalog.models import Task
from gateway_project.errors import BadRequest, TooManyRequests
from llm.tokenizer import messages_tokens
from metering import services
from metering.models import Metric, PolicyRule, UsageLog, UsageMeter, Window
from metering.periods import period_start
from metering.policy import policy_cache_invalidate, policy_evaluate
from metering.policy_keys import POLICY_KEYS, KeyKind, PolicyValueError, ValueType, validate_value
from tenants.selectors import identity_resolve
from tenants.services import tenant_set_enforcement_mode
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
URL = f"/v1/{TASK}/chat/completions"
MESSAGES = [{"role": "user", "content": "Describe a widget"}]
TOKENS_IN = messages_tokens(MESSAGES)
PRO_MAX_OUT = 4_096  # the PRO plan's max_tokens_out: what a call without max_tokens asks for
NOON = datetime(2030, 6, 3, 12, 0, tzinfo=UTC)


def chat(persona, **body):
    return persona.client.post(URL, {"model": "auto", "messages": MESSAGES, **body}, format="json")


def set_rule(tenant, key: str, value) -> PolicyRule:
    return services.policy_rule_set(scope="TENANT", tenant=tenant, key=key, value=value)


def day_meter(tenant) -> UsageMeter:
    return UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric=Metric.TOKENS, window=Window.DAY)


def assert_settled() -> None:
    assert services.meters_reconcile() == []
    assert not UsageMeter.objects.filter(reserved__gt=0).exists()


# --- through the API -----------------------------------------------------------------------------


def test_with_600_tokens_left_a_default_call_is_shrunk_to_fit_and_says_so(tenant_admin):
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", 600)
    fitted = 600 - TOKENS_IN

    r = chat(tenant_admin)  # no max_tokens: the plan's 4 096, whose worst case needs 4 096 + input

    assert r.status_code == 200, r.content
    assert (f"max_tokens shrunk from {PRO_MAX_OUT} to {fitted} to fit the remaining quota (tenant_tokens_per_day)"
            in r.headers["X-Gateway-Warning"])
    log = UsageLog.objects.get()
    assert (log.status, log.max_tokens_fitted, log.would_refuse_code) == ("SUCCESS", fitted, "")
    assert 0 < r.json()["usage"]["completion_tokens"] <= fitted
    assert_settled()


def test_the_offline_answer_keeps_to_the_shrunk_max_tokens(tenant_admin):
    # Room for 5 output tokens; the offline provider would write at least 12.
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", TOKENS_IN + 5)
    set_rule(tenant_admin.tenant, "fit_min_max_tokens", 4)

    r = chat(tenant_admin, max_tokens=1_000)

    assert r.status_code == 200, r.content
    data = r.json()
    assert data["usage"]["completion_tokens"] == 5 and data["choices"][0]["finish_reason"] == "length"
    assert "max_tokens shrunk from 1000 to 5" in r.headers["X-Gateway-Warning"]
    assert UsageLog.objects.get().max_tokens_fitted == 5
    assert day_meter(tenant_admin.tenant).used == TOKENS_IN + 5  # exactly the quota, never over it
    assert_settled()


def test_a_call_that_fits_as_asked_is_not_touched(tenant_admin):
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", 600)

    r = chat(tenant_admin, max_tokens=100)

    assert r.status_code == 200, r.content
    assert "X-Gateway-Warning" not in r.headers
    assert UsageLog.objects.get().max_tokens_fitted is None


def test_with_fitting_turned_off_by_rule_the_same_call_is_refused(tenant_admin):
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", 600)
    call_command("set_policy", "--scope", "tenant", "--tenant", tenant_admin.tenant.slug,
                 "--key", "fit_max_tokens_to_budget", "--value", "off", stdout=io.StringIO())

    r = chat(tenant_admin)

    body = assert_error(r, 429, "quota_exceeded")
    message = body["error"]["message"]
    assert (f"0 tokens used of 600 tokens today (UTC), 0 tokens held by calls in progress, 600 tokens left; "
            f"this request needs {TOKENS_IN + PRO_MAX_OUT} tokens ({TOKENS_IN} in + up to {PRO_MAX_OUT} out)"
            in message)
    assert f"It would fit with max_tokens {600 - TOKENS_IN} or less" in message
    assert "budget fitting is off (fit_max_tokens_to_budget)" in message
    assert UsageLog.objects.get().status == UsageLog.Status.REFUSED


def test_below_the_minimum_the_call_is_refused_naming_used_left_and_needed(tenant_admin):
    # A first call uses some of the day; what is left is under the default minimum of 256.
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", TOKENS_IN + 200 + 60)
    first = chat(tenant_admin, max_tokens=60)
    assert first.status_code == 200, first.content
    used = first.json()["usage"]["total_tokens"]
    left = TOKENS_IN + 260 - used

    r = chat(tenant_admin)

    message = assert_error(r, 429, "quota_exceeded")["error"]["message"]
    assert f"{used} tokens used of {TOKENS_IN + 260} tokens today (UTC)" in message
    assert f"{left} tokens left" in message
    assert f"this request needs {TOKENS_IN + PRO_MAX_OUT} tokens" in message
    assert f"It would fit with max_tokens {left - TOKENS_IN} or less" in message
    assert "budget fitting goes no lower than fit_min_max_tokens" in message
    assert day_meter(tenant_admin.tenant).used == used  # the refusal took nothing
    # Lowering the minimum by rule lets the same call through, shrunk.
    set_rule(tenant_admin.tenant, "fit_min_max_tokens", left - TOKENS_IN)
    again = chat(tenant_admin)
    assert again.status_code == 200, again.content
    assert UsageLog.objects.get(status="SUCCESS", max_tokens_fitted__isnull=False).max_tokens_fitted == left - TOKENS_IN
    assert_settled()


def test_the_cost_quota_is_fitted_at_the_most_expensive_candidate(tenant_admin):
    set_rule(tenant_admin.tenant, "tenant_cost_per_month_usd", "0.01")

    r = chat(tenant_admin)

    assert r.status_code == 200, r.content
    assert "to fit the remaining quota (tenant_cost_per_month_usd)" in r.headers["X-Gateway-Warning"]
    assert UsageLog.objects.get().max_tokens_fitted is not None
    assert_settled()


def test_shadow_mode_never_shortens_the_answer_and_records_only_what_hard_would_refuse(tenant_admin):
    tenant_set_enforcement_mode(slug=tenant_admin.tenant.slug, mode="SHADOW")
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", 600)

    r = chat(tenant_admin)

    assert r.status_code == 200, r.content
    assert "X-Gateway-Warning" not in r.headers  # SHADOW records silently
    log = UsageLog.objects.get()
    # Not shrunk, and HARD would have served it (shrunk): nothing is recorded as refused.
    assert (log.max_tokens_fitted, log.would_refuse_code) == (None, "")
    assert_settled()


def test_soft_mode_says_what_hard_would_do_and_leaves_the_call_as_asked(tenant_admin):
    tenant_set_enforcement_mode(slug=tenant_admin.tenant.slug, mode="SOFT")
    set_rule(tenant_admin.tenant, "tenant_tokens_per_day", TOKENS_IN + 5)
    set_rule(tenant_admin.tenant, "fit_min_max_tokens", 5)

    r = chat(tenant_admin, max_tokens=40)

    assert r.status_code == 200, r.content
    assert ("in HARD mode, max_tokens shrunk from 40 to 5 to fit the remaining quota (tenant_tokens_per_day); "
            "SOFT leaves max_tokens as asked") in r.headers["X-Gateway-Warning"]
    assert r.json()["usage"]["completion_tokens"] > 5  # the offline answer writes at least 12 words
    log = UsageLog.objects.get()
    assert (log.max_tokens_fitted, log.would_refuse_code) == (None, "")
    assert_settled()


# --- the arithmetic, at the policy layer ---------------------------------------------------------


def evaluate(persona, **kwargs):
    tenant = persona.tenant
    context = identity_resolve(user_id=persona.user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)
    kwargs.setdefault("tokens_in", 100)
    return policy_evaluate(context=context, task_code=TASK, now=NOON, **kwargs)


def rule(persona, key: str, value, **kwargs) -> None:
    services.policy_rule_set(scope="TENANT", tenant=persona.tenant, key=key, value=value, **kwargs)
    policy_cache_invalidate()


def meter(persona, metric: str, window: str, used: int, reserved: int = 0) -> UsageMeter:
    return UsageMeter.objects.create(tenant=persona.tenant, metric=metric, window=window,
                                     period_start=period_start(window, NOON), used=used, reserved=reserved)


def test_multi_step_holds_divide_what_is_left_by_the_steps(tenant_admin):
    rule(tenant_admin, "tenant_tokens_per_day", 10_000)
    meter(tenant_admin, Metric.TOKENS, Window.DAY, used=1_000, reserved=500)  # 8 500 left

    decision = evaluate(tenant_admin, steps=3)

    assert decision.max_tokens_out == decision.max_tokens_fitted == 8_500 // 3 - 100
    hold = next(h for h in decision.holds if h.key == "tenant_tokens_per_day")
    assert hold.amount == 3 * (100 + decision.max_tokens_out) <= 8_500


def test_the_tightest_of_several_quotas_and_rates_wins(tenant_admin):
    rule(tenant_admin, "tenant_tokens_per_day", 3_000)
    rule(tenant_admin, "tenant_tpm", 1_500)
    rule(tenant_admin, "tenant_tokens_per_day", 900, task=Task.objects.get(code=TASK))

    decision = evaluate(tenant_admin)

    assert decision.max_tokens_fitted == 800
    assert decision.warnings[-1] == f"max_tokens shrunk from {PRO_MAX_OUT} to 800 to fit the remaining quota " \
                                    "(tenant_tokens_per_day)"
    assert all(h.amount <= h.limit for h in decision.holds)


def test_a_cost_fit_is_the_largest_answer_every_candidate_can_pay_for(tenant_admin):
    rule(tenant_admin, "tenant_cost_per_month_usd", "0.02")
    meter(tenant_admin, Metric.COST, Window.MONTH, used=5_000)  # 15 000 micro-USD left

    decision = evaluate(tenant_admin)

    fitted = decision.max_tokens_fitted
    assert fitted is not None and fitted < PRO_MAX_OUT
    # The hold's worst case: every prompt token at the model's dearest input rate (a cache write).
    worst = [max(m.worst_cost_micro_usd(tokens_in=100, tokens_out=out) for m in decision.candidates)
             for out in (fitted, fitted + 1)]
    assert worst[0] <= 15_000 < worst[1]  # exactly the most that fits, at the dearest candidate's prices
    assert next(h for h in decision.holds if h.key == "tenant_cost_per_month_usd").amount == worst[0]


def test_a_fitted_call_that_a_concurrent_one_outran_is_still_refused_and_says_what_was_left(tenant_admin):
    rule(tenant_admin, "tenant_tokens_per_day", 1_000)
    day = meter(tenant_admin, Metric.TOKENS, Window.DAY, used=0, reserved=200)
    decision = evaluate(tenant_admin)
    assert decision.max_tokens_fitted == 700
    # Other calls took most of what was left between policy and admission.
    UsageMeter.objects.filter(pk=day.pk).update(reserved=700)

    with pytest.raises(TooManyRequests) as refused:
        services.usage_admit(tenant_id=tenant_admin.tenant.pk, user_id=tenant_admin.user.pk, decision=decision,
                             request_id="r-race", mode="HARD", now=NOON)

    message = refused.value.message
    assert "0 tokens used of 1000 tokens today (UTC), 700 tokens held by calls in progress, 300 tokens left" in message
    assert "this request needs 800 tokens (100 in + up to 700 out)" in message
    assert "max_tokens was already shrunk to 700 to fit" in message
    day.refresh_from_db()
    assert (day.used, day.reserved) == (0, 700)  # the refusal took nothing


def test_without_usage_readable_nothing_is_fitted(tenant_admin):
    rule(tenant_admin, "tenant_tokens_per_day", 600)
    assert evaluate(tenant_admin, usage_unavailable=True).max_tokens_fitted is None
    assert evaluate(tenant_admin).max_tokens_fitted == 500


@override_settings(POLICY_USAGE_CACHE_SECONDS=60)
def test_fitting_reads_the_usage_snapshot_it_shares_with_usage_conditions(tenant_admin):
    rule(tenant_admin, "tenant_tokens_per_day", 1_000)
    day = meter(tenant_admin, Metric.TOKENS, Window.DAY, used=0)
    assert evaluate(tenant_admin).max_tokens_fitted == 900
    UsageMeter.objects.filter(pk=day.pk).update(used=400)
    assert evaluate(tenant_admin).max_tokens_fitted == 900  # a moment old: admission is the exact check


# --- the keys -------------------------------------------------------------------------------------


def test_the_fitting_keys_are_in_the_registry_with_their_defaults():
    switch, minimum = POLICY_KEYS["fit_max_tokens_to_budget"], POLICY_KEYS["fit_min_max_tokens"]
    assert (switch.kind, switch.value_type, switch.default) == (KeyKind.PER_REQUEST, ValueType.BOOL, True)
    assert (minimum.kind, minimum.value_type, minimum.default) == (KeyKind.PER_REQUEST, ValueType.INT, 256)
    assert switch.description and minimum.description and not switch.is_metered


@pytest.mark.parametrize("raw, expected", [(True, True), (False, False), ("true", True), ("Off", False),
                                           (" on ", True), ("no", False), ("1", True), (0, False),
                                           ("False", False)])
def test_a_switch_takes_the_usual_spellings(raw, expected):
    assert validate_value("fit_max_tokens_to_budget", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", 2, -1, None, "", [True], 1.0])
def test_a_switch_refuses_anything_else(raw):
    with pytest.raises(PolicyValueError, match="is a switch: true or false"):
        validate_value("fit_max_tokens_to_budget", raw)


def test_bad_switch_values_are_refused_by_the_service_and_the_command(tenant_admin):
    with pytest.raises(BadRequest, match="is a switch"):
        set_rule(tenant_admin.tenant, "fit_max_tokens_to_budget", "sometimes")
    with pytest.raises(CommandError, match="is a switch"):
        call_command("set_policy", "--scope", "global", "--key", "fit_max_tokens_to_budget", "--value", "2")
    assert not PolicyRule.objects.filter(key="fit_max_tokens_to_budget").exists()


def test_the_admin_saves_a_switch_and_shows_it_back(admin_client, tenant_admin):
    data = {"scope": "TENANT", "plan": "", "tenant": tenant_admin.tenant.pk, "user": "", "task": "",
            "key": "fit_max_tokens_to_budget", "value": "off", "is_active": "on", "note": "no fitting",
            "start_time": "", "end_time": "", "timezone": "UTC", "when_quota_key": "", "when_usage_percent_gte": ""}
    response = admin_client.post("/admin/metering/policyrule/add/", data)
    assert response.status_code == 302, response.content[:2000]
    saved = PolicyRule.objects.get(note="no fitting")
    assert saved.value is False
    # The change page shows the value back in a form the admin accepts again.
    page = admin_client.get(f"/admin/metering/policyrule/{saved.pk}/change/")
    shown = page.context["adminform"].form.initial["value"]
    assert validate_value("fit_max_tokens_to_budget", shown) is False
