"""The 100 % alert fires on a quota's first refusal (issue 12 item 4): worst-case holds refuse before
`used` reaches the limit, so settlement's 100 % crossing alone would leave a tenant at a wall with no
QUOTA_EXCEEDED alert. Once per meter and period, with its notification; SHADOW's would-be refusal
raises it too; rates and concurrency do not. Both holds backends (PostgreSQL function and Python)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
from django.core import mail

import metering.tasks  # noqa: F401  eager Celery runs a task enqueued by name only once it is registered
from gateway_project.errors import TooManyRequests
from llm.tokenizer import messages_tokens
from metering import services
from metering.alerts.models import Notification, QuotaAlert
from metering.models import Metric, UsageMeter, Window
from metering.periods import period_start
from metering.policy import policy_cache_invalidate, policy_evaluate
from tenants.selectors import identity_resolve
from tenants.services import tenant_set_enforcement_mode
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
MESSAGES = [{"role": "user", "content": "Describe a widget"}]
TOKENS_IN = messages_tokens(MESSAGES)
# The Python implementation runs on every database; PostgreSQL also has its SQL function.
BACKENDS = ["python"] + (["postgres"] if os.environ.get("DATABASE_URL", "").startswith("postgres") else [])


@pytest.fixture(params=BACKENDS)
def backend(request, settings):
    settings.METERING_HOLDS_BACKEND = request.param
    settings.ALERT_EAGER_IN_BACKGROUND = False  # deliveries inline, so the test sees them
    return request.param


def chat(persona, **body):
    return persona.client.post(f"/v1/{TASK}/chat/completions", {"model": "auto", "messages": MESSAGES, **body},
                               format="json")


def set_rule(tenant, key: str, value) -> None:
    services.policy_rule_set(scope="TENANT", tenant=tenant, key=key, value=value)


def exceeded(tenant) -> list[QuotaAlert]:
    return list(QuotaAlert.objects.filter(tenant=tenant, kind=QuotaAlert.Kind.QUOTA_EXCEEDED))


def test_the_first_quota_refusal_raises_quota_exceeded_once_with_its_notification(tenant_admin, member, backend):
    tenant = tenant_admin.tenant
    set_rule(tenant, "tenant_tokens_per_day", 600)
    set_rule(tenant, "fit_max_tokens_to_budget", False)

    first = chat(member)  # 4 096 + input do not fit in 600: refused, with 600 of 600 unused

    assert_error(first, 429, "quota_exceeded")
    (alert,) = exceeded(tenant)
    meter = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric=Metric.TOKENS, window=Window.DAY)
    assert (alert.meter_id, alert.policy_key, alert.limit_value, alert.observed_value) == (
        meter.pk, "tenant_tokens_per_day", 600, 0)
    assert alert.period_start == meter.period_start
    # Notified: the tenant's admins, in the app and by email (the member who was refused is no admin).
    assert list(Notification.objects.filter(alert=alert).values_list("user_id", flat=True)) == [tenant_admin.user.pk]
    assert [m.to for m in mail.outbox] == [[tenant_admin.user.email]]
    assert "tenant_tokens_per_day is used up" in mail.outbox[0].subject

    second = chat(member)

    assert_error(second, 429, "quota_exceeded")
    assert exceeded(tenant) == [alert]
    assert Notification.objects.filter(alert__kind=QuotaAlert.Kind.QUOTA_EXCEEDED).count() == 1
    assert len(mail.outbox) == 1


def test_a_refusal_after_the_100_percent_crossing_adds_no_second_alert(tenant_admin, backend):
    tenant = tenant_admin.tenant
    set_rule(tenant, "tenant_tokens_per_day", TOKENS_IN + 5)
    set_rule(tenant, "fit_min_max_tokens", 5)
    assert chat(tenant_admin).status_code == 200  # fitted to exactly what is left: 100 % used at settlement
    (alert,) = exceeded(tenant)
    assert alert.observed_value == TOKENS_IN + 5

    assert_error(chat(tenant_admin), 429, "quota_exceeded")

    assert exceeded(tenant) == [alert]


def test_shadow_mode_raises_it_once_on_the_first_call_hard_would_refuse(tenant_admin, backend):
    tenant = tenant_admin.tenant
    tenant_set_enforcement_mode(slug=tenant.slug, mode="SHADOW")
    set_rule(tenant, "tenant_tokens_per_day", 10)  # not even the input fits

    first, second = chat(tenant_admin), chat(tenant_admin)

    assert first.status_code == second.status_code == 200
    (alert,) = exceeded(tenant)
    assert (alert.policy_key, alert.limit_value, alert.observed_value) == ("tenant_tokens_per_day", 10, 0)
    assert all("X-Gateway-Warning" not in r.headers for r in (first, second))  # SHADOW records silently


def test_soft_mode_raises_it_too(tenant_admin, backend):
    tenant_set_enforcement_mode(slug=tenant_admin.tenant.slug, mode="SOFT")
    set_rule(tenant_admin.tenant, "tenant_cost_per_month_usd", "0.000001")

    assert chat(tenant_admin).status_code == 200

    (alert,) = exceeded(tenant_admin.tenant)
    assert (alert.policy_key, alert.limit_value) == ("tenant_cost_per_month_usd", 1)


def test_a_rate_refusal_raises_no_quota_alert(tenant_admin, backend):
    set_rule(tenant_admin.tenant, "tenant_rpm", 1)
    now = datetime.now(UTC)
    if now.second >= 55:  # both calls in one minute
        time.sleep(61 - now.second)

    assert chat(tenant_admin, max_tokens=20).status_code == 200
    assert_error(chat(tenant_admin, max_tokens=20), 429, "rate_limited")

    assert exceeded(tenant_admin.tenant) == []


NOON = datetime(2030, 6, 3, 12, 0, tzinfo=UTC)


def decide(persona):
    tenant = persona.tenant
    context = identity_resolve(user_id=persona.user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)
    return policy_evaluate(context=context, task_code=TASK, now=NOON, tokens_in=100, requested_max_tokens_out=100)


def admit(persona, decision, request_id: str, mode: str = "HARD"):
    return services.usage_admit(tenant_id=persona.tenant.pk, user_id=persona.user.pk, decision=decision,
                                request_id=request_id, mode=mode, now=NOON)


def test_a_concurrency_refusal_raises_no_quota_alert(tenant_admin, backend):
    services.policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_concurrent", value=1)
    policy_cache_invalidate()
    admit(tenant_admin, decide(tenant_admin), "r-1")  # holds the one slot

    with pytest.raises(TooManyRequests) as refused:
        admit(tenant_admin, decide(tenant_admin), "r-2")

    assert refused.value.code == "concurrency_limit"
    assert "1 of 1 calls in flight" in refused.value.message
    assert exceeded(tenant_admin.tenant) == []
    # Its own 90 % alert was raised when the slot was taken, as before.
    assert QuotaAlert.objects.filter(kind=QuotaAlert.Kind.CONCURRENCY_LIMIT).count() == 1


def test_a_new_period_s_first_refusal_keeps_the_meter_its_alert_points_at(tenant_admin, backend):
    # No meter yet for this day: admission creates it, refuses, and the alert still has its meter.
    services.policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day", value=50)
    policy_cache_invalidate()

    with pytest.raises(TooManyRequests):
        admit(tenant_admin, decide(tenant_admin), "r-new")

    (alert,) = exceeded(tenant_admin.tenant)
    meter = alert.meter
    assert (meter.metric, meter.window, meter.period_start) == (Metric.TOKENS, Window.DAY,
                                                                period_start(Window.DAY, NOON))
    assert (meter.used, meter.reserved) == (0, 0)


def test_the_cost_refusal_message_reads_in_dollars(tenant_admin, backend):
    services.policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_cost_per_month_usd",
                             value="0.0005")
    policy_cache_invalidate()

    with pytest.raises(TooManyRequests) as refused:
        admit(tenant_admin, decide(tenant_admin), "r-cost")

    message = refused.value.message
    assert "tenant_cost_per_month_usd would be exceeded for all tasks" in message
    assert "$0 used of $0.0005 this month (UTC), $0 held by calls in progress, $0.0005 left" in message
    assert "this request needs $" in message and "most expensive candidate model" in message
    assert len(exceeded(tenant_admin.tenant)) == 1
