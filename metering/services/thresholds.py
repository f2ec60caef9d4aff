"""Threshold alerts: 80 % and 100 % of a quota, 90 % of a concurrency limit (metering/rules.py),
created once per meter, kind and period (the unique constraint decides, so racing settlements agree)
and notified after commit."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction

from metering.alerts.models import QuotaAlert
from metering.dispatch import task_enqueue_on_commit
from metering.models import Metric, UsageHold, Window
from metering.periods import period_start
from metering.policy import HoldSpec
from metering.policy_keys import POLICY_KEYS, KeyKind
from metering.rules import CONCURRENCY_PERCENT, EXCEEDED_PERCENT, WARN_PERCENT, CallOutcome, crossed_thresholds

KIND_BY_PERCENT = {WARN_PERCENT: QuotaAlert.Kind.QUOTA_WARNING, EXCEEDED_PERCENT: QuotaAlert.Kind.QUOTA_EXCEEDED}


def alerts_notify(alert_ids: list[int]) -> None:
    for alert_id in alert_ids:
        task_enqueue_on_commit("metering.tasks.alert_notify", alert_id)


def alert_create(*, tenant_id: int, meter_id: int, kind: str, period: datetime, key: str, limit: int,
                 observed: int) -> bool:
    """Once per meter, kind and period. True if this call created it."""
    try:
        with transaction.atomic():
            alert = QuotaAlert.objects.create(tenant_id=tenant_id, meter_id=meter_id, kind=kind, period_start=period,
                                              policy_key=key, limit_value=limit, observed_value=observed)
    except IntegrityError:
        return False
    alerts_notify([alert.pk])
    return True


def concurrency_alerts(*, tenant_id: int, by_meter: dict[int, HoldSpec], values: dict[int, tuple[int, int]],
                       now: datetime) -> None:
    for meter_id, hold in by_meter.items():
        if hold.metric != Metric.CONCURRENT or hold.limit <= 0:
            continue
        in_flight = values[meter_id][1]
        if in_flight * 100 >= hold.limit * CONCURRENCY_PERCENT:
            alert_create(tenant_id=tenant_id, meter_id=meter_id, kind=QuotaAlert.Kind.CONCURRENCY_LIMIT,
                         period=period_start(Window.DAY, now), key=hold.key, limit=hold.limit, observed=in_flight)


def quota_alerts(*, tenant_id: int, holds: list[UsageHold], outcome: CallOutcome,
                 values: dict[int, tuple[int, int]]) -> None:
    for hold in holds:
        if POLICY_KEYS[hold.policy_key].kind != KeyKind.QUOTA:
            continue
        added = outcome.actual(hold.meter.metric)
        after = values[hold.meter_id][0]
        for percent in crossed_thresholds(limit=hold.limit_value, before=after - added, after=after):
            alert_create(tenant_id=tenant_id, meter_id=hold.meter_id, kind=KIND_BY_PERCENT[percent],
                         period=hold.meter.period_start, key=hold.policy_key, limit=hold.limit_value,
                         observed=after)
