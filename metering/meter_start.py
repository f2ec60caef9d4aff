"""Where a new meter starts (DESIGN.md §3): "per month" means this month, not "since the rule was
written". A meter row is created by the first admission that needs it (a new period, a new rule, a
plan change that brings a new key), and it starts from:

- `baseline`: what the daily rollup (UsageDaily) already holds for its subject (the tenant; the user
  if user-scoped; the task if task-scoped) and period: that UTC day, or the days of the month so far,
  by the rule of metering/rules.py (tokens = in + out, cost, api_calls, requests = admitted calls).
  A minute has no rollup, so rate meters (MINUTE) start from 0; a concurrency gauge counts calls in
  flight, not a total, so its baseline is 0 too;
- adopted holds: every call of that subject and period that can still settle (in flight, or released
  by expiry or by hand but not yet in the ledger) gets a hold on the new meter, so that its usage
  lands there when it settles. An in-flight call holds what it already holds of that metric on
  another meter (its worst case), one slot of a concurrency meter, and a released one nothing.

Exactly once, under concurrency: before reading the rollup, the creator locks those calls'
reservations (in id order). A settlement that already claimed one commits first, and the rollup read
after the lock sees it; one that comes later waits for the meter and its adopted hold, and settles
through the hold. So no call is in both the baseline and the meter's holds, and none is in neither.
The window that remains is by design: a call admitted after the lock without a hold on the new
meter (a process still serving the policy from before the rule, or outside a rule's time window) is
not counted by that meter; reconciliation agrees, since it counts a meter's baseline and its holds.

The PostgreSQL function (metering/pg_functions.py, gateway_admit's ensure step) does the same in SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import Coalesce

from metering.models import Metric, UsageDaily, UsageHold, UsageLog, UsageMeter, UsageReservation, Window
from metering.periods import period_end
from metering.policy import HoldSpec
from metering.rules import ROLLUP_SUMS, rollup_amount

# Reservations that can still settle: in flight, or released under a call that may still report.
CAN_SETTLE = (UsageReservation.Status.ACTIVE, UsageReservation.Status.EXPIRED, UsageReservation.Status.RELEASED)


def rollup_days(window: str, start: datetime) -> tuple[date, date] | None:
    """The UTC days [first, end) of a period that the daily rollup covers; None where it has none."""
    if window not in (Window.DAY, Window.MONTH):
        return None  # a minute has no rollup; a gauge (concurrency) has no total
    end = period_end(window, start)
    return start.astimezone(UTC).date(), end.astimezone(UTC).date()


def meter_baseline(*, tenant_id: int, user_id: int | None, task_id: int | None, metric: str, window: str,
                   start: datetime, api_key_id: int | None = None) -> int:
    """What the rollup holds for this subject and period (0 for minute windows and gauges)."""
    days = rollup_days(window, start)
    if days is None:
        return 0
    if api_key_id is not None:
        return _key_baseline(tenant_id=tenant_id, api_key_id=api_key_id, task_id=task_id, metric=metric,
                             start=start, end=period_end(window, start))
    rows = UsageDaily.objects.filter(tenant_id=tenant_id, day__gte=days[0], day__lt=days[1])
    if user_id is not None:
        rows = rows.filter(user_id=user_id)
    if task_id is not None:
        rows = rows.filter(task_id=task_id)
    return rollup_amount(metric, rows.aggregate(**{name: Coalesce(Sum(name), 0) for name in ROLLUP_SUMS}))


def _key_baseline(*, tenant_id: int, api_key_id: int, task_id: int | None, metric: str, start: datetime,
                  end: datetime) -> int:
    """An API key's meter starts from the key's ledger rows of the period: the rollup has no key
    dimension, and a key's rows are an indexed range (usagelog_key_time), read once per meter."""
    rows = UsageLog.objects.filter(api_key_id=api_key_id, tenant_id=tenant_id, admitted_at__gte=start,
                                   admitted_at__lt=end).exclude(status=UsageLog.Status.REFUSED)
    if task_id is not None:
        rows = rows.filter(task_id=task_id)
    sums = rows.aggregate(**{name: Coalesce(Sum(name), 0) for name in ROLLUP_SUMS if name != "requests"},
                          requests=Count("id"))
    return rollup_amount(metric, sums)


def _order(hold: HoldSpec) -> tuple:
    # One insert order for every creator: two admissions creating the same meters never wait on
    # each other's rows crosswise.
    return (hold.metric, hold.window, hold.user_id or 0, hold.task_id or 0, hold.api_key_id or 0, hold.period_start)


def _covers(hold: HoldSpec, row: dict) -> bool:
    end = period_end(hold.window, hold.period_start)
    return (row["created_at"] >= hold.period_start and (end is None or row["created_at"] < end)
            and hold.user_id in (None, row["user_id"]) and hold.task_id in (None, row["task_id"])
            and hold.api_key_id in (None, row["api_key_id"])
            and (row["status"] == UsageReservation.Status.ACTIVE or hold.metric != Metric.CONCURRENT))


@transaction.atomic
def meters_create(*, tenant_id: int, holds: list[HoldSpec]) -> None:
    """Create the meters of these holds, each from its baseline, with the calls that can still
    settle adopted. Inside the caller's transaction; a meter another admission created meanwhile is
    left as that one made it."""
    holds = sorted(holds, key=_order)
    subjects = Q()
    for hold in holds:
        subject = {name: value for name, value in (("user_id", hold.user_id), ("task_id", hold.task_id),
                                                   ("api_key_id", hold.api_key_id)) if value}
        subjects |= Q(created_at__gte=hold.period_start, expires_at__gte=hold.period_start, **subject)
    # The lock (PostgreSQL; SQLite serializes writers already), in id order, before the rollup is read.
    calls = list(UsageReservation.objects.select_for_update().filter(subjects, tenant_id=tenant_id,
                                                                     status__in=CAN_SETTLE)
                 .order_by("pk").values("pk", "status", "user_id", "task_id", "api_key_id", "created_at"))
    active = [c["pk"] for c in calls if c["status"] == UsageReservation.Status.ACTIVE]
    worst = {(h["reservation_id"], h["meter__metric"]): h["top"]
             for h in UsageHold.objects.filter(reservation_id__in=active).values("reservation_id", "meter__metric")
             .annotate(top=Max("amount"))}
    for hold in holds:
        adopted = []
        for call in (c for c in calls if _covers(hold, c)):
            if call["status"] != UsageReservation.Status.ACTIVE:
                amount = 0  # its holds were released; a late settlement adds what it used
            elif hold.metric == Metric.CONCURRENT:
                amount = 1
            else:
                amount = worst.get((call["pk"], hold.metric), 0)
            adopted.append((call["pk"], amount))
        baseline = meter_baseline(tenant_id=tenant_id, user_id=hold.user_id, task_id=hold.task_id,
                                  metric=hold.metric, window=hold.window, start=hold.period_start,
                                  api_key_id=hold.api_key_id)
        try:
            with transaction.atomic():
                meter = UsageMeter.objects.create(
                    tenant_id=tenant_id, user_id=hold.user_id, task_id=hold.task_id, api_key_id=hold.api_key_id,
                    metric=hold.metric,
                    window=hold.window, period_start=hold.period_start, used=baseline, baseline=baseline,
                    reserved=sum(amount for _, amount in adopted))
        except IntegrityError:
            continue  # another admission created it (and adopted these calls) first
        UsageHold.objects.bulk_create(
            UsageHold(reservation_id=reservation_id, meter=meter, amount=amount, policy_key=hold.key,
                      limit_value=hold.limit)
            for reservation_id, amount in adopted
        )
