"""Policy evaluation with real rules in the database: precedence, task scoping, time windows,
usage-based throttling, the refusal order and codes, clamping, and the holds admission will take."""

from __future__ import annotations

from datetime import UTC, datetime, time
from time import sleep

import pytest
from django.utils import timezone

from catalog.models import Plan, PlanLLMAccess, ProviderModel, Task
from catalog.selectors import catalog_cache_invalidate
from gateway_project.errors import GatewayError
from metering import services
from metering.models import Metric, PolicyRule, UsageMeter, Window
from metering.periods import period_start
from metering.policy import effective_limits, policy_cache_invalidate, policy_evaluate
from tenants.models import Tenant, User
from tenants.selectors import TenantContext, identity_resolve
from tests.conftest import make_tenant

# A Monday in June (Europe/Paris is UTC+2 then).
MONDAY_NOON = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
PRO_MAX_OUT = 4_096  # seeded PRO plan rule
PRO_MAX_IN = 32_000
PRO_MONTH_TOKENS = 5_000_000
PRO_MONTH_COST = 250_000_000  # "250" USD


def context_for(user: User) -> TenantContext:
    tenant = user.tenant
    return identity_resolve(user_id=user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)


def rule(**kwargs) -> PolicyRule:
    """Write a rule through the service and make it visible at once (the service invalidates on commit,
    and a test's transaction never commits)."""
    created = services.policy_rule_set(**kwargs)
    policy_cache_invalidate()
    return created


def task(code: str) -> Task:
    return Task.objects.get(code=code)


def limits(user: User, task_code: str = "LLM2_DRAFT", now: datetime = MONDAY_NOON) -> dict:
    return {(x.key, x.task_code): x for x in effective_limits(context=context_for(user), task_code=task_code, now=now)}


def value(user: User, key: str, task_code: str = "LLM2_DRAFT", now: datetime = MONDAY_NOON, per_task=None):
    found = limits(user, task_code, now).get((key, per_task))
    return None if found is None else found.value


def evaluate(user: User, task_code: str = "LLM2_DRAFT", now: datetime = MONDAY_NOON, **kwargs):
    kwargs.setdefault("tokens_in", 100)
    return policy_evaluate(context=context_for(user), task_code=task_code, now=now, **kwargs)


def meter(tenant: Tenant, metric: str, window: str, used: int, *, now: datetime = MONDAY_NOON, user=None,
          task_obj=None, reserved: int = 0) -> UsageMeter:
    return UsageMeter.objects.create(tenant=tenant, user=user, task=task_obj, metric=metric, window=window,
                                     period_start=period_start(window, now), used=used, reserved=reserved)


# --- precedence --------------------------------------------------------------------------------


def test_precedence_global_plan_tenant_user_most_specific_wins_even_when_looser(member):
    admin, user, tenant = member.tenant.users.get(role=User.Role.ADMIN), member.user, member.tenant
    assert value(user, "tenant_tpm", per_task=None) is None  # no rule anywhere yet
    g = rule(scope="GLOBAL", key="tenant_tpm", value=1_000)
    assert value(user, "tenant_tpm") == 1_000
    assert limits(user)[("tenant_tpm", None)].source == f"rule #{g.pk} (global)"
    rule(scope="PLAN", plan=_plan("PRO"), key="tenant_tpm", value=5_000)
    assert value(user, "tenant_tpm") == 5_000  # plan beats global although it is looser
    t = rule(scope="TENANT", tenant=tenant, key="tenant_tpm", value=9_000)
    assert value(user, "tenant_tpm") == 9_000
    u = rule(scope="USER", user=user, key="tenant_tpm", value=200)
    assert value(user, "tenant_tpm") == 200
    assert f"rule #{u.pk} (user acme-member)" in limits(user)[("tenant_tpm", None)].source
    # The user rule is that user's only: the admin still gets the tenant's.
    assert value(admin, "tenant_tpm") == 9_000
    assert f"rule #{t.pk} (tenant {tenant.slug})" in limits(admin)[("tenant_tpm", None)].source
    # Another tenant on the same plan gets the plan's.
    _, other_admin = make_tenant("Globex IP", "globex-admin")
    assert value(other_admin, "tenant_tpm") == 5_000


def _plan(code: str) -> Plan:
    return Plan.objects.get(code=code)


def test_precedence_is_applied_in_the_decision_and_its_holds(member):
    user, tenant = member.user, member.tenant
    rule(scope="GLOBAL", key="max_tokens_out", value=100)  # looser scopes do not matter once plan sets it
    assert evaluate(user).max_tokens_out == PRO_MAX_OUT
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=2_000)
    assert evaluate(user).max_tokens_out == 2_000
    rule(scope="USER", user=user, key="max_tokens_out", value=3_000)
    decision = evaluate(user)
    assert decision.max_tokens_out == 3_000
    assert "user acme-member" in decision.limits["max_tokens_out"].source
    # Quota holds take the winning limit too.
    rule(scope="TENANT", tenant=tenant, key="tenant_tokens_per_day", value=123_456)
    holds = {(h.key, h.task_id): h for h in evaluate(user).holds}
    assert holds[("tenant_tokens_per_day", None)].limit == 123_456
    assert "tenant acme-patents" in holds[("tenant_tokens_per_day", None)].source


def test_inactive_rule_does_not_apply(tenant_admin):
    user = tenant_admin.user
    r = rule(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out", value=10)
    assert value(user, "max_tokens_out") == 10
    PolicyRule.objects.filter(pk=r.pk).update(is_active=False)
    policy_cache_invalidate()
    assert value(user, "max_tokens_out") == PRO_MAX_OUT


def test_rule_write_invalidates_the_cache_on_commit(tenant_admin, django_capture_on_commit_callbacks):
    user = tenant_admin.user
    assert value(user, "max_tokens_out") == PRO_MAX_OUT  # now cached
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out", value=500)
    # Until the write commits the cached rules stay: nothing reads an uncommitted rule set.
    assert value(user, "max_tokens_out") == PRO_MAX_OUT
    for callback in callbacks:
        callback()
    assert value(user, "max_tokens_out") == 500


# --- task-specific vs all tasks ----------------------------------------------------------------


def test_task_specific_beats_all_tasks_at_the_same_scope(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=3_000)
    specific = rule(scope="TENANT", tenant=tenant, task=task("LLM2_DRAFT"), key="max_tokens_out", value=3_500)
    draft = limits(user, "LLM2_DRAFT")[("max_tokens_out", "LLM2_DRAFT")]
    assert draft.value == 3_500 and f"rule #{specific.pk}" in draft.source
    assert value(user, "max_tokens_out", "LLM1_PRIOR_ART") == 3_000
    assert ("max_tokens_out", "LLM2_DRAFT") not in limits(user, "LLM1_PRIOR_ART")
    # A tighter all-tasks rule of the same scope does not beat the task's own.
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=10)
    assert evaluate(user, "LLM2_DRAFT").max_tokens_out == 3_500
    assert evaluate(user, "LLM1_PRIOR_ART").max_tokens_out == 10


def test_more_specific_scope_beats_task_specific_rule_of_a_broader_scope(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    rule(scope="PLAN", plan=_plan("PRO"), task=task("LLM2_DRAFT"), key="max_tokens_out", value=100)
    assert evaluate(user).max_tokens_out == 100
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=3_000)
    assert evaluate(user).max_tokens_out == 3_000


def test_quota_with_and_without_task_are_both_enforced(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    draft = task("LLM2_DRAFT")
    rule(scope="TENANT", tenant=tenant, task=draft, key="tenant_tokens_per_day", value=50_000)
    decision = evaluate(user, tokens_in=1_000, requested_max_tokens_out=500)
    day = {h.task_id: h for h in decision.holds if h.key == "tenant_tokens_per_day"}
    assert set(day) == {None, draft.id}
    assert day[None].limit == 500_000 and day[draft.id].limit == 50_000  # plan's all-tasks and the task's
    assert day[None].amount == day[draft.id].amount == 1_500
    assert decision.limits["tenant_tokens_per_day:LLM2_DRAFT"].value == 50_000
    # Other tasks only meet the all-tasks limit.
    other = [h for h in evaluate(user, "LLM1_PRIOR_ART").holds if h.key == "tenant_tokens_per_day"]
    assert [(h.task_id, h.limit) for h in other] == [(None, 500_000)]
    # The task's meter refuses at admission although the all-tasks meter has room.
    meter(tenant, Metric.TOKENS, Window.DAY, 49_000, task_obj=draft)
    with pytest.raises(GatewayError) as refused:
        services.usage_admit(tenant_id=tenant.pk, user_id=user.pk, decision=decision, request_id="r-task",
                             mode="HARD", now=MONDAY_NOON)
    assert refused.value.code == "quota_exceeded" and "this task" in refused.value.message
    assert services.usage_admit(tenant_id=tenant.pk, user_id=user.pk, decision=evaluate(user, "LLM1_PRIOR_ART"),
                                request_id="r-other", mode="HARD", now=MONDAY_NOON)


# --- time windows ------------------------------------------------------------------------------


def test_business_hours_window_in_its_time_zone(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=2_000)
    windowed = rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=512, weekdays=[0, 1, 2, 3, 4],
                    start_time=time(9, 0), end_time=time(17, 0), timezone_name="Europe/Paris")

    def at(*args) -> int:
        return value(user, "max_tokens_out", now=datetime(*args, tzinfo=UTC))

    assert at(2025, 6, 2, 7, 0) == 512  # Monday 09:00 Paris: the window opens
    assert at(2025, 6, 2, 6, 59) == 2_000  # 08:59 Paris (09:00 would be inside in UTC: the zone matters)
    assert at(2025, 6, 2, 14, 59) == 512  # 16:59 Paris
    assert at(2025, 6, 2, 15, 0) == 2_000  # 17:00 Paris: the end is exclusive (and 15:00 UTC is not)
    assert at(2025, 6, 6, 10, 0) == 512  # Friday
    assert at(2025, 6, 7, 10, 0) == 2_000  # Saturday: not a listed weekday
    assert at(2025, 6, 8, 10, 0) == 2_000  # Sunday
    inside = limits(user, now=datetime(2025, 6, 2, 10, 0, tzinfo=UTC))[("max_tokens_out", None)]
    assert f"rule #{windowed.pk}" in inside.source and "time window" in inside.source
    # The decision uses the window as well.
    assert evaluate(user, now=datetime(2025, 6, 2, 10, 0, tzinfo=UTC)).max_tokens_out == 512
    assert evaluate(user, now=datetime(2025, 6, 7, 10, 0, tzinfo=UTC)).max_tokens_out == 2_000


def test_window_local_weekday_differs_from_utc_weekday(tenant_admin):
    user = tenant_admin.user
    rule(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out", value=300, weekdays=[0],
         timezone_name="Asia/Tokyo")  # Mondays in Tokyo (UTC+9)
    assert value(user, "max_tokens_out", now=datetime(2025, 6, 1, 16, 0, tzinfo=UTC)) == 300  # Mon 01:00 Tokyo
    assert value(user, "max_tokens_out", now=datetime(2025, 6, 2, 16, 0, tzinfo=UTC)) == PRO_MAX_OUT  # Tue


def test_window_over_midnight(tenant_admin):
    user = tenant_admin.user
    rule(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out", value=256, start_time=time(22, 0),
         end_time=time(6, 0))

    def at(hour: int, minute: int = 0) -> int:
        return value(user, "max_tokens_out", now=datetime(2025, 6, 3, hour, minute, tzinfo=UTC))

    assert at(22, 0) == 256
    assert at(23, 30) == 256
    assert at(0, 0) == 256
    assert at(5, 59) == 256
    assert at(6, 0) == PRO_MAX_OUT
    assert at(12, 0) == PRO_MAX_OUT
    assert at(21, 59) == PRO_MAX_OUT


def test_window_over_midnight_belongs_to_the_weekday_it_starts_on(tenant_admin):
    """A Friday-night window (Fri 22:00 - Sat 06:00) covers early Saturday, not early Friday."""
    user = tenant_admin.user
    rule(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out", value=256, weekdays=[4],
         start_time=time(22, 0), end_time=time(6, 0))

    def at(day: int, hour: int) -> int:
        return value(user, "max_tokens_out", now=datetime(2025, 6, day, hour, 0, tzinfo=UTC))

    assert at(6, 23) == 256  # Friday 23:00
    assert at(7, 2) == 256  # Saturday 02:00: still Friday night
    assert at(7, 6) == PRO_MAX_OUT  # Saturday 06:00: over
    assert at(6, 2) == PRO_MAX_OUT  # Friday 02:00 belongs to Thursday night
    assert at(7, 23) == PRO_MAX_OUT  # Saturday 23:00


def test_ties_between_applicable_rules_go_to_the_tighter_value(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    # Two windowed tenant rules that both apply on a Monday at noon.
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=600, start_time=time(8, 0), end_time=time(18, 0))
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=700, weekdays=[0])
    assert value(user, "max_tokens_out") == 600
    rule(scope="TENANT", tenant=tenant, key="tenant_cost_per_month_usd", value="5", start_time=time(8, 0),
         end_time=time(18, 0))
    rule(scope="TENANT", tenant=tenant, key="tenant_cost_per_month_usd", value="12.50", weekdays=[0])
    assert value(user, "tenant_cost_per_month_usd") == 5_000_000
    PolicyRule.objects.filter(key="tenant_cost_per_month_usd", weekdays__isnull=True, tenant=tenant).update(
        value="50")
    policy_cache_invalidate()
    assert value(user, "tenant_cost_per_month_usd") == 12_500_000


# --- usage-based throttling ----------------------------------------------------------------------


def test_max_tokens_out_drops_past_90_percent_of_monthly_tokens(tenant_admin):
    """The seeded PRO rule: max_tokens_out 1024 once tenant_tokens_per_month is at least 90 % used."""
    user, tenant = tenant_admin.user, tenant_admin.tenant
    tokens = meter(tenant, Metric.TOKENS, Window.MONTH, PRO_MONTH_TOKENS * 90 // 100 - 1)
    decision = evaluate(user, requested_max_tokens_out=PRO_MAX_OUT)
    assert decision.max_tokens_out == PRO_MAX_OUT and not decision.warnings

    UsageMeter.objects.filter(pk=tokens.pk).update(used=PRO_MONTH_TOKENS * 90 // 100)
    decision = evaluate(user, requested_max_tokens_out=PRO_MAX_OUT)
    assert decision.max_tokens_out == 1_024
    assert any("clamped" in w for w in decision.warnings)
    assert "when tenant_tokens_per_month >= 90%" in decision.limits["max_tokens_out"].source
    assert value(user, "max_tokens_out") == 1_024
    # Reserved counts as well: 89 % used + 1 % in flight.
    UsageMeter.objects.filter(pk=tokens.pk).update(used=PRO_MONTH_TOKENS * 89 // 100,
                                                  reserved=PRO_MONTH_TOKENS // 100)
    assert evaluate(user).max_tokens_out == 1_024
    # Last month's usage does not count this month.
    UsageMeter.objects.filter(pk=tokens.pk).update(used=0, reserved=0)
    meter(tenant, Metric.TOKENS, Window.MONTH, PRO_MONTH_TOKENS, now=datetime(2025, 5, 15, tzinfo=UTC))
    assert evaluate(user).max_tokens_out == PRO_MAX_OUT


def test_usage_conditions_read_a_snapshot_at_most_policy_usage_cache_seconds_old(tenant_admin, settings):
    """Throttle conditions may read usage up to POLICY_USAGE_CACHE_SECONDS old, never older."""
    settings.POLICY_USAGE_CACHE_SECONDS = 0.3
    user, tenant = tenant_admin.user, tenant_admin.tenant
    now = timezone.now()
    tokens = meter(tenant, Metric.TOKENS, Window.MONTH, PRO_MONTH_TOKENS * 90 // 100 - 1, now=now)
    assert evaluate(user, now=now).max_tokens_out == PRO_MAX_OUT
    # Usage recorded elsewhere (another process's calls) within the snapshot's lifetime: not read yet.
    UsageMeter.objects.filter(pk=tokens.pk).update(used=PRO_MONTH_TOKENS * 90 // 100)
    assert evaluate(user, now=now).max_tokens_out == PRO_MAX_OUT
    sleep(0.35)
    assert evaluate(user, now=now).max_tokens_out == 1_024


def test_throttle_uses_the_task_specific_quota_too(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    draft = task("LLM2_DRAFT")
    rule(scope="TENANT", tenant=tenant, task=draft, key="tenant_tokens_per_month", value=100_000)
    meter(tenant, Metric.TOKENS, Window.MONTH, 95_000, task_obj=draft)  # 95 % of the task's quota
    assert evaluate(user, "LLM2_DRAFT").max_tokens_out == 1_024
    # The other task only has the all-tasks quota, which is nearly unused.
    assert evaluate(user, "LLM1_PRIOR_ART").max_tokens_out == PRO_MAX_OUT


def test_conditional_rule_beats_a_plain_rule_of_the_same_scope(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=3_000)
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=800, when_quota_key="user_tokens_per_month",
         when_usage_percent_gte=50)
    assert evaluate(user).max_tokens_out == 3_000
    # A user quota condition reads that user's meter (PRO: 2,000,000 per month).
    meter(tenant, Metric.TOKENS, Window.MONTH, 1_000_000, user=user)
    assert evaluate(user).max_tokens_out == 800
    # The tenant's plain rule beats the plan's throttle rule (scope first).
    meter(tenant, Metric.TOKENS, Window.MONTH, PRO_MONTH_TOKENS)
    UsageMeter.objects.filter(user=user).update(used=0)
    assert evaluate(user).max_tokens_out == 3_000


def test_allowed_model_classes_narrow_to_cheaper_ones_under_a_condition(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    rule(scope="TENANT", tenant=tenant, task=task("LLM2_DRAFT"), key="allowed_model_classes", value="PRO_M",
         when_quota_key="tenant_cost_per_month_usd", when_usage_percent_gte=80)
    cost = meter(tenant, Metric.COST, Window.MONTH, PRO_MONTH_COST * 80 // 100 - 1)
    before = evaluate(user)
    assert before.allowed and before.model_classes == ["PRO_M", "PRO_L"]
    assert evaluate(user, requested_model="PRO_L").allowed

    UsageMeter.objects.filter(pk=cost.pk).update(used=PRO_MONTH_COST * 80 // 100)
    after = evaluate(user)
    assert after.allowed and after.model_classes == ["PRO_M"]
    assert {m.model_class for m in after.candidates} == {"PRO_M"}
    assert after.limits["allowed_model_classes"].value == ["PRO_M"]
    refused = evaluate(user, requested_model="PRO_L")
    assert not refused.allowed and refused.code == "model_class_not_allowed" and refused.status == 403
    assert not evaluate(user, requested_model="claude-sonnet-4-5").allowed  # a PRO_L provider model
    # Other tasks keep their classes.
    assert evaluate(user, "LLM1_PRIOR_ART").model_classes == ["BASE_S", "BASE_M"]


# --- refusals, in order ----------------------------------------------------------------------------


def test_feature_not_in_plan(catalog):
    _, free_admin = make_tenant("Free Co", "free-admin", plan="FREE")
    decision = evaluate(free_admin, "LLM2_DRAFT", tokens_in=10**9, requested_model="NOPE")
    # The first check wins, whatever else is wrong with the request.
    assert not decision.allowed and decision.code == "feature_not_in_plan" and decision.status == 403
    assert "PATENT_DRAFTING" in decision.message and decision.holds == []
    assert evaluate(free_admin, "LLM1_PRIOR_ART").allowed


def test_task_not_in_plan(tenant_admin):
    user = tenant_admin.user
    assert evaluate(user).allowed
    PlanLLMAccess.objects.filter(plan__code="PRO", task__code="LLM2_DRAFT").delete()
    catalog_cache_invalidate()
    decision = evaluate(user, tokens_in=10**9, requested_model="NOPE")
    assert not decision.allowed and decision.code == "task_not_in_plan" and decision.status == 403
    assert "LLM2_DRAFT" in decision.message


def test_unknown_task(tenant_admin):
    decision = evaluate(tenant_admin.user, "LLM9_NOPE")
    assert not decision.allowed and decision.code == "task_not_found"


def test_model_class_not_allowed_and_model_not_found(catalog):
    _, pro = make_tenant("Pro Co", "pro-admin", plan="PRO")
    _, enterprise = make_tenant("Big Co", "big-admin", plan="ENTERPRISE")
    for requested in ("ADVANCED", "claude-opus-4-1", "BASE_S"):
        decision = evaluate(pro, requested_model=requested, tokens_in=10**9)  # checked before input size
        assert not decision.allowed and decision.code == "model_class_not_allowed", requested
        assert decision.status == 403 and "PRO_M, PRO_L" in decision.message
    assert evaluate(enterprise, requested_model="ADVANCED").allowed
    pinned = evaluate(enterprise, requested_model="claude-opus-4-1")
    assert pinned.allowed and [m.model_name for m in pinned.candidates] == ["claude-opus-4-1"]
    missing = evaluate(pro, requested_model="gpt-9")
    assert not missing.allowed and missing.code == "model_not_found" and missing.status == 404


def test_requested_class_and_auto_choose_candidates_in_preference_order(tenant_admin):
    user = tenant_admin.user
    auto = evaluate(user)
    assert auto.model_classes == ["PRO_M", "PRO_L"]
    classes = [m.model_class for m in auto.candidates]
    assert classes == sorted(classes, key=["PRO_M", "PRO_L"].index) and set(classes) == {"PRO_M", "PRO_L"}
    only = evaluate(user, requested_model="PRO_L")
    assert only.model_classes == ["PRO_L"] and {m.model_class for m in only.candidates} == {"PRO_L"}


def test_input_too_large(tenant_admin):
    user = tenant_admin.user
    assert evaluate(user, tokens_in=PRO_MAX_IN).allowed
    decision = evaluate(user, tokens_in=PRO_MAX_IN + 1)
    assert not decision.allowed and decision.code == "input_too_large" and decision.status == 413
    assert str(PRO_MAX_IN) in decision.message
    # SOFT blocks a per-request safety limit too; SHADOW records what HARD would have done.
    assert evaluate(user, tokens_in=PRO_MAX_IN + 1, mode="SOFT").code == "input_too_large"
    shadow = evaluate(user, tokens_in=PRO_MAX_IN + 1, mode="SHADOW")
    assert shadow.allowed and shadow.would_refuse_code == "input_too_large"
    # A user rule lifts it for that user only.
    rule(scope="USER", user=user, key="max_tokens_in", value=PRO_MAX_IN + 1)
    assert evaluate(user, tokens_in=PRO_MAX_IN + 1).allowed


def test_max_tokens_out_is_clamped_with_a_warning(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    clamped = evaluate(user, requested_max_tokens_out=10_000)
    assert clamped.allowed and clamped.max_tokens_out == PRO_MAX_OUT
    assert clamped.warnings == [f"max_tokens clamped from 10000 to {PRO_MAX_OUT}"]
    exact = evaluate(user, requested_max_tokens_out=100)
    assert exact.max_tokens_out == 100 and exact.warnings == []
    assert evaluate(user).max_tokens_out == PRO_MAX_OUT  # not given: the limit
    # The candidates' own output cap clamps too (the smallest among PRO_M/PRO_L models).
    model_cap = min(ProviderModel.objects.filter(model_class__code__in=["PRO_M", "PRO_L"], is_active=True)
                    .values_list("max_output_tokens", flat=True))
    rule(scope="TENANT", tenant=tenant, key="max_tokens_out", value=model_cap * 10)
    assert evaluate(user, requested_max_tokens_out=model_cap * 5).max_tokens_out == model_cap


def test_max_api_calls_caps_the_api_calls_hold(tenant_admin):
    user = tenant_admin.user
    decision = evaluate(user, api_calls=1_000)
    assert decision.api_calls == 30  # PRO max_api_calls
    assert {h.amount for h in decision.holds if h.key == "tenant_api_calls_per_month"} == {30}


# --- holds -----------------------------------------------------------------------------------------


def _worst_cost(classes: list[str], tokens_in: int, tokens_out: int) -> int:
    costs = []
    # The worst case prices every prompt token at the model's dearest input rate (a cache write can
    # cost more than plain input: catalog/pricing.py).
    for p_in, p_write, p_out in ProviderModel.objects.filter(
        model_class__code__in=classes, is_active=True
    ).values_list("input_price_per_mtok_micro_usd", "cache_write_price_per_mtok_micro_usd",
                  "output_price_per_mtok_micro_usd"):
        numerator = tokens_in * max(p_in, p_write or 0) + tokens_out * p_out
        costs.append(numerator // 1_000_000 + (1 if numerator % 1_000_000 else 0))
    return max(costs)


def test_holds_have_the_right_amounts(tenant_admin):
    user = tenant_admin.user
    draft = task("LLM2_DRAFT")
    decision = evaluate(user, tokens_in=1_234, requested_max_tokens_out=2_000)
    holds = {(h.key, h.task_id): h for h in decision.holds}
    assert set(holds) == {
        ("tenant_tokens_per_day", None), ("tenant_tokens_per_month", None), ("user_tokens_per_month", None),
        ("tenant_cost_per_month_usd", None), ("tenant_api_calls_per_month", None), ("tenant_rpm", None),
        ("user_rpm", None), ("max_concurrent", draft.id),
    }
    for key in ("tenant_tokens_per_day", "tenant_tokens_per_month", "user_tokens_per_month"):
        assert holds[(key, None)].amount == 1_234 + 2_000
        assert holds[(key, None)].metric == Metric.TOKENS
    assert holds[("tenant_tokens_per_day", None)].window == Window.DAY
    assert holds[("tenant_tokens_per_day", None)].period_start == datetime(2025, 6, 2, tzinfo=UTC)
    assert holds[("tenant_tokens_per_month", None)].period_start == datetime(2025, 6, 1, tzinfo=UTC)
    assert holds[("user_tokens_per_month", None)].user_id == user.pk
    assert holds[("tenant_tokens_per_month", None)].user_id is None
    cost = holds[("tenant_cost_per_month_usd", None)]
    assert isinstance(cost.amount, int) and cost.amount == _worst_cost(["PRO_M", "PRO_L"], 1_234, 2_000)
    assert cost.limit == PRO_MONTH_COST
    assert holds[("tenant_api_calls_per_month", None)].amount == 1
    assert holds[("tenant_rpm", None)].amount == holds[("user_rpm", None)].amount == 1
    concurrency = holds[("max_concurrent", draft.id)]
    assert (concurrency.amount, concurrency.limit, concurrency.metric) == (1, 2, Metric.CONCURRENT)


def test_cost_hold_is_the_worst_case_rounded_up(tenant_admin):
    user = tenant_admin.user
    # gpt-4o-mini: 0.15 / 0.60 USD per 1M tokens -> 7 in + 3 out = 2.85 micro-USD, held as 3.
    decision = evaluate(user, "LLM1_PRIOR_ART", requested_model="gpt-4o-mini", tokens_in=7,
                        requested_max_tokens_out=3)
    cost = next(h for h in decision.holds if h.key == "tenant_cost_per_month_usd")
    assert cost.amount == 3
    # Only the cheaper class requested: the worst case is over that class only.
    base = evaluate(user, "LLM1_PRIOR_ART", requested_model="BASE_S", tokens_in=1_000,
                    requested_max_tokens_out=1_000)
    auto = evaluate(user, "LLM1_PRIOR_ART", tokens_in=1_000, requested_max_tokens_out=1_000)
    base_cost = next(h.amount for h in base.holds if h.key == "tenant_cost_per_month_usd")
    auto_cost = next(h.amount for h in auto.holds if h.key == "tenant_cost_per_month_usd")
    assert base_cost == _worst_cost(["BASE_S"], 1_000, 1_000)
    assert auto_cost == _worst_cost(["BASE_S", "BASE_M"], 1_000, 1_000) > base_cost


def test_cost_limit_in_usd_is_enforced_in_micro_usd(tenant_admin):
    user, tenant = tenant_admin.user, tenant_admin.tenant
    rule(scope="TENANT", tenant=tenant, key="tenant_cost_per_month_usd", value="12.50")
    assert value(user, "tenant_cost_per_month_usd") == 12_500_000
    decision = evaluate(user, tokens_in=1_000, requested_max_tokens_out=1_000)
    hold = next(h for h in decision.holds if h.key == "tenant_cost_per_month_usd")
    assert hold.limit == 12_500_000
    # Admission: exactly at the limit fits, one micro-dollar more does not.
    cost = meter(tenant, Metric.COST, Window.MONTH, 12_500_000 - hold.amount + 1)
    with pytest.raises(GatewayError) as refused:
        services.usage_admit(tenant_id=tenant.pk, user_id=user.pk, decision=decision, request_id="r-1",
                             mode="HARD", now=MONDAY_NOON)
    assert refused.value.code == "quota_exceeded" and refused.value.status_code == 429
    assert "tenant_cost_per_month_usd" in refused.value.message
    UsageMeter.objects.filter(pk=cost.pk).update(used=12_500_000 - hold.amount)
    services.usage_admit(tenant_id=tenant.pk, user_id=user.pk, decision=decision, request_id="r-2", mode="HARD",
                         now=MONDAY_NOON)
    cost.refresh_from_db()
    assert cost.used + cost.reserved == 12_500_000


def test_unpriced_models_are_never_routed_to_and_a_task_with_only_unpriced_models_is_refused(tenant_admin):
    from django.utils import timezone

    from tenants.selectors import identity_resolve

    ProviderModel.objects.filter(model_name="offline-pro-m").update(input_price_per_mtok_micro_usd=None)
    catalog_cache_invalidate()
    user = tenant_admin.user
    ati_id = tenant_admin.tenant.signup_ati_token_id
    context = identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=ati_id)
    now = timezone.now()
    decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", requested_model="PRO_M", tokens_in=10, now=now)
    assert decision.allowed
    assert "offline-pro-m" not in [m.model_name for m in decision.candidates]
    ProviderModel.objects.filter(model_class__code="PRO_M").update(output_price_per_mtok_micro_usd=None)
    catalog_cache_invalidate()
    decision = policy_evaluate(context=context, task_code="LLM2_DRAFT", requested_model="PRO_M", tokens_in=10, now=now)
    assert (decision.allowed, decision.code, decision.status) == (False, "model_unpriced", 503)
