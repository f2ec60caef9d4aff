"""Constraints the database itself enforces, whatever path (admin, shell, a buggy service) writes the rows.

Rows are written with bulk_create / update where a model's save() might validate first, so that each
refusal below is the database's.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, transaction

from catalog.models import ModelClass, Plan, ProviderModel, Task
from metering.alerts.models import QuotaAlert
from metering.models import Metric, PolicyRule, UsageMeter, Window
from tenants.models import User

PERIOD = datetime(2025, 1, 1, tzinfo=UTC)


def refused(callable_, *args, **kwargs) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        callable_(*args, **kwargs)


# --- tenants.User ---------------------------------------------------------------------------------


def test_user_without_tenant_must_be_staff(db):
    refused(User.objects.bulk_create, [User(username="stray", password="!")])
    assert not User.objects.filter(username="stray").exists()


def test_staff_and_super_admins_may_have_no_tenant(db):
    User.objects.bulk_create([User(username="staffer", password="!", is_staff=True)])
    User.objects.bulk_create([User(username="root", password="!", is_superuser=True)])
    assert User.objects.filter(tenant__isnull=True).count() == 2


def test_tenant_user_cannot_be_detached_from_the_tenant(member):
    refused(User.objects.filter(pk=member.user.pk).update, tenant=None)
    member.user.refresh_from_db()
    assert member.user.tenant_id == member.tenant.pk


def test_usernames_are_unique(member):
    refused(User.objects.bulk_create, [User(username="acme-member", password="!", tenant=member.tenant)])


# --- metering.PolicyRule: scope and subject agree -----------------------------------------------------


def _rule(**kwargs) -> PolicyRule:
    return PolicyRule(key="max_tokens_out", value=1000, **kwargs)


@pytest.fixture
def subjects(tenant_admin):
    return {
        "plan": Plan.objects.get(code="PRO"),
        "tenant": tenant_admin.tenant,
        "user": tenant_admin.user,
    }


@pytest.mark.parametrize(
    "scope, subject_fields",
    [("GLOBAL", []), ("PLAN", ["plan"]), ("TENANT", ["tenant"]), ("USER", ["user"])],
)
def test_policy_rule_with_matching_subject_is_accepted(subjects, scope, subject_fields):
    PolicyRule.objects.bulk_create([_rule(scope=scope, **{f: subjects[f] for f in subject_fields})])
    assert PolicyRule.objects.filter(scope=scope, key="max_tokens_out", value=1000).exists()


@pytest.mark.parametrize(
    "scope, subject_fields",
    [
        ("GLOBAL", ["plan"]),
        ("GLOBAL", ["tenant"]),
        ("GLOBAL", ["user"]),
        ("PLAN", []),
        ("PLAN", ["tenant"]),
        ("PLAN", ["plan", "tenant"]),
        ("TENANT", []),
        ("TENANT", ["plan"]),
        ("TENANT", ["tenant", "user"]),
        ("USER", []),
        ("USER", ["tenant"]),
        ("USER", ["user", "plan"]),
        ("EVERYONE", []),
    ],
)
def test_policy_rule_scope_must_match_its_subject(subjects, scope, subject_fields):
    refused(PolicyRule.objects.bulk_create, [_rule(scope=scope, **{f: subjects[f] for f in subject_fields})])
    assert not PolicyRule.objects.filter(key="max_tokens_out", value=1000).exists()


def test_policy_rule_cannot_be_moved_to_a_mismatching_scope(subjects):
    (rule,) = PolicyRule.objects.bulk_create([_rule(scope="PLAN", plan=subjects["plan"])])
    refused(PolicyRule.objects.filter(pk=rule.pk).update, scope="GLOBAL")
    refused(PolicyRule.objects.filter(pk=rule.pk).update, scope="TENANT", tenant=subjects["tenant"])


def test_policy_rule_usage_condition_needs_a_quota_key(subjects):
    refused(PolicyRule.objects.bulk_create, [_rule(scope="GLOBAL", when_usage_percent_gte=80)])
    PolicyRule.objects.bulk_create(
        [_rule(scope="GLOBAL", when_usage_percent_gte=80, when_quota_key="tenant_tokens_per_month")]
    )


# --- metering.UsageMeter: one meter per subject and period, NULLs included ----------------------------


def _meter(tenant, *, user=None, task=None, metric=Metric.TOKENS, window=Window.MONTH, period_start=PERIOD):
    return UsageMeter.objects.create(
        tenant=tenant, user=user, task=task, metric=metric, window=window, period_start=period_start
    )


def test_tenant_wide_meter_is_unique_even_with_null_user_and_task(tenant_admin):
    tenant = tenant_admin.tenant
    _meter(tenant)
    # NULL != NULL in a plain unique index; the constraint must still see these as the same meter.
    refused(_meter, tenant)
    assert UsageMeter.objects.filter(tenant=tenant).count() == 1


def test_meter_uniqueness_with_null_task_and_with_null_user(tenant_admin):
    tenant, user = tenant_admin.tenant, tenant_admin.user
    task = Task.objects.get(code=Task.Code.DRAFT)
    _meter(tenant, user=user)
    refused(_meter, tenant, user=user)
    _meter(tenant, task=task)
    refused(_meter, tenant, task=task)
    _meter(tenant, user=user, task=task)
    refused(_meter, tenant, user=user, task=task)
    assert UsageMeter.objects.filter(tenant=tenant).count() == 3


def test_meters_that_differ_in_any_part_of_the_key_coexist(tenant_admin, member, outsider):
    tenant = tenant_admin.tenant
    task = Task.objects.get(code=Task.Code.PRIOR_ART)
    _meter(tenant)
    _meter(tenant, user=tenant_admin.user)
    _meter(tenant, user=member.user)
    _meter(tenant, task=task)
    _meter(tenant, metric=Metric.COST)
    _meter(tenant, window=Window.DAY)
    _meter(tenant, period_start=datetime(2025, 2, 1, tzinfo=UTC))
    _meter(outsider.tenant)
    assert UsageMeter.objects.count() == 8


def test_meter_amounts_cannot_go_negative(tenant_admin):
    meter = _meter(tenant_admin.tenant)
    refused(UsageMeter.objects.filter(pk=meter.pk).update, used=-1)
    refused(UsageMeter.objects.filter(pk=meter.pk).update, reserved=-1)


# --- metering.QuotaAlert: once per meter, kind and period ------------------------------------------------


def _alert(meter, kind=QuotaAlert.Kind.QUOTA_WARNING, period_start=PERIOD):
    return QuotaAlert.objects.create(
        tenant=meter.tenant, meter=meter, kind=kind, period_start=period_start,
        policy_key="tenant_tokens_per_month", limit_value=1000, observed_value=800,
    )


def test_quota_alert_is_unique_per_meter_kind_and_period(tenant_admin):
    meter = _meter(tenant_admin.tenant)
    _alert(meter)
    refused(_alert, meter)
    _alert(meter, kind=QuotaAlert.Kind.QUOTA_EXCEEDED)
    _alert(meter, period_start=datetime(2025, 2, 1, tzinfo=UTC))
    _alert(_meter(tenant_admin.tenant, user=tenant_admin.user))
    assert QuotaAlert.objects.count() == 4


# --- catalog.ProviderModel: prices --------------------------------------------------------------------


def _provider_model(**prices) -> ProviderModel:
    return ProviderModel(
        provider="openai_compatible", model_name="test-model", model_class=ModelClass.objects.get(code="BASE_S"),
        **prices,
    )


@pytest.mark.parametrize(
    "prices",
    [
        {"input_price_per_mtok_micro_usd": -1, "output_price_per_mtok_micro_usd": 10},
        {"input_price_per_mtok_micro_usd": 10, "output_price_per_mtok_micro_usd": -1},
    ],
    ids=["input", "output"],
)
def test_negative_price_is_refused(catalog, prices):
    refused(ProviderModel.objects.bulk_create, [_provider_model(**prices)])


def test_zero_and_missing_prices_are_stored(catalog):
    ProviderModel.objects.bulk_create(
        [_provider_model(input_price_per_mtok_micro_usd=0, output_price_per_mtok_micro_usd=0)]
    )
    unpriced = _provider_model()
    unpriced.model_name = "unpriced"
    unpriced.save()
    assert unpriced.is_priced is False
    assert ProviderModel.objects.get(model_name="test-model").is_priced is True


def test_provider_model_name_is_unique_per_provider(catalog):
    ProviderModel.objects.bulk_create([_provider_model(input_price_per_mtok_micro_usd=1)])
    refused(ProviderModel.objects.bulk_create, [_provider_model(input_price_per_mtok_micro_usd=2)])


@pytest.mark.parametrize(
    "price_in, price_out, tokens_in, tokens_out, expected",
    [
        (1_000_000, 1_000_000, 1, 0, 1),  # $1/Mtok: one token is exactly one micro-USD
        (150_000, 600_000, 1, 0, 1),  # 0.15 micro-USD rounds up, never down to free
        (150_000, 600_000, 0, 1, 1),  # 0.6 -> 1
        (150_000, 600_000, 1, 1, 1),  # 0.75 -> 1
        (150_000, 600_000, 10, 0, 2),  # 1.5 -> 2
        (333_333, 0, 3, 0, 1),  # 0.999999 -> 1
        (2_500_000, 10_000_000, 1_000_000, 1_000_000, 12_500_000),  # exact: no rounding added
        (2_500_000, 10_000_000, 1_000_001, 0, 2_500_003),  # 2_500_002.5 -> 2_500_003
        (2_500_000, 10_000_000, 0, 0, 0),
        (75_000_000, 75_000_000, 10**9, 10**9, 150_000_000_000),  # large counts stay exact integers
    ],
)
def test_cost_is_integer_micro_usd_rounded_up(catalog, price_in, price_out, tokens_in, tokens_out, expected):
    model = _provider_model(input_price_per_mtok_micro_usd=price_in, output_price_per_mtok_micro_usd=price_out)
    cost = model.cost_micro_usd(tokens_in=tokens_in, tokens_out=tokens_out)
    assert cost == expected
    assert type(cost) is int
