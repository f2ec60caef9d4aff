from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import override_settings

from metering.alerts.models import QuotaAlert
from metering.models import Metric, UsageMeter, Window
from tests.metering.alerts import receivers


@pytest.fixture(autouse=True)
def _alerts_inline():
    """Deliveries run inline under eager Celery here (the background-thread mode has its own test)."""
    with override_settings(ALERT_EAGER_IN_BACKGROUND=False, ALERT_RETRY_BACKOFF_SECONDS=30.0,
                           ALERT_RETRY_BACKOFF_MAX_SECONDS=3600.0, ALERT_CHANNEL_MAX_FAILURES=5,
                           ALERT_DELIVERY_MAX_ATTEMPTS=8, ALERT_HTTP_TIMEOUT_SECONDS=2.0,
                           ALERT_ALLOW_PRIVATE_TARGETS=True):
        yield


@pytest.fixture
def receiver_factory():
    started: list[receivers.Receiver] = []

    def make(**kwargs) -> receivers.Receiver:
        receiver = receivers.start(receivers.Receiver(**kwargs))
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receivers.stop(receiver)


def make_alert(tenant, *, kind: str = QuotaAlert.Kind.QUOTA_WARNING, key: str = "tenant_tokens_per_day",
               limit: int = 1_000, observed: int = 850, period: datetime | None = None) -> QuotaAlert:
    """A QuotaAlert as settlement writes it (tests of the metered path create it through a real call)."""
    period = period or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    meter, _ = UsageMeter.objects.get_or_create(tenant=tenant, user=None, task=None, metric=Metric.TOKENS,
                                                window=Window.DAY, period_start=period,
                                                defaults={"used": observed})
    return QuotaAlert.objects.create(tenant=tenant, meter=meter, kind=kind, period_start=period, policy_key=key,
                                     limit_value=limit, observed_value=observed)
