"""Writes of enforcement and accounting: admission, settlement, expiry, refusals, alerts, reconciliation.

Every limit is a meter plus a conditional hold (DESIGN.md §3). Admission takes all holds of one
request in one short transaction, in meter-id order, each as one conditional UPDATE; settlement
moves holds to used with the actual amounts and writes the one immutable ledger row.
"""

from __future__ import annotations

import json
import logging
import uuid
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from gateway_project.errors import BadRequest, Conflict, TooManyRequests
from metering import meter_sql
from metering.models import (
    Metric,
    PolicyRule,
    QuotaAlert,
    UsageDaily,
    UsageHold,
    UsageLog,
    UsageMeter,
    UsageReservation,
    Window,
)
from metering.periods import period_start, seconds_until_reset
from metering.policy import EnforcementDecision, HoldSpec
from metering.policy_keys import POLICY_KEYS, KeyKind
from tenants.audit import audit_record, changed_fields

logger = logging.getLogger("gateway.metering")

REFUSAL_BY_KIND = {KeyKind.QUOTA: "quota_exceeded", KeyKind.CONCURRENCY: "concurrency_limit",
                   KeyKind.RATE: "rate_limited"}
REFUSAL_ORDER = [KeyKind.QUOTA, KeyKind.CONCURRENCY, KeyKind.RATE]
WARN_PERCENT, EXCEEDED_PERCENT, CONCURRENCY_PERCENT = 80, 100, 90


class IdempotencyInFlight(Exception):
    """Another request with the same Idempotency-Key holds the key; the caller waits for its result."""


class ReservationLost(Exception):
    """The reservation does not exist (its admission was lost in a database crash): the caller
    must keep the usage another way (the spool)."""


@dataclass
class Admission:
    reservation_id: uuid.UUID
    request_id: str
    admitted_at: datetime
    enforcement_mode: str
    would_refuse_code: str = ""
    would_refuse_message: str = ""


@dataclass
class CallOutcome:
    status: str  # UsageLog.Status
    provider: str = ""
    model_name: str = ""
    model_class: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_micro_usd: int = 0
    api_calls: int = 0
    latency_ms: int = 0
    error_code: str = ""
    usage_estimated: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    response_status: int | None = None
    response_body: Any = None
    would_refuse_code: str = ""

    def actual(self, metric: str) -> int:
        return {
            Metric.TOKENS: self.tokens_in + self.tokens_out,
            Metric.COST: self.cost_micro_usd,
            Metric.API_CALLS: self.api_calls,
            Metric.REQUESTS: 1,  # an admitted request counts once, whatever happened to it
            Metric.CONCURRENT: 0,  # a slot is only ever held, never used up
        }[metric]


def _meter_key(tenant_id: int, hold: HoldSpec) -> tuple:
    return (tenant_id, hold.user_id, hold.task_id, hold.metric, hold.window, hold.period_start)


def _meter_ids(keys: set[tuple]) -> dict[tuple, int]:
    q = Q()
    for k in keys:
        q |= Q(tenant_id=k[0], user_id=k[1], task_id=k[2], metric=k[3], window=k[4], period_start=k[5])
    return {
        (r["tenant_id"], r["user_id"], r["task_id"], r["metric"], r["window"], r["period_start"]): r["id"]
        for r in UsageMeter.objects.filter(q).values("id", "tenant_id", "user_id", "task_id", "metric", "window",
                                                     "period_start")
    }


def meters_ensure(*, tenant_id: int, holds: list[HoldSpec]) -> dict[tuple, int]:
    """Meter ids for these holds, creating missing rows (insert-or-ignore: safe under races)."""
    keys = {_meter_key(tenant_id, h) for h in holds}
    if not keys:
        return {}
    found = _meter_ids(keys)
    missing = keys - found.keys()
    if missing:
        UsageMeter.objects.bulk_create(
            [UsageMeter(tenant_id=k[0], user_id=k[1], task_id=k[2], metric=k[3], window=k[4], period_start=k[5])
             for k in missing],
            ignore_conflicts=True,
        )
        found.update(_meter_ids(missing))
    return found


def _refusal_from(failed: list[HoldSpec], now: datetime) -> tuple[str, str, int]:
    by_kind = {POLICY_KEYS[h.key].kind: h for h in failed}
    for kind in REFUSAL_ORDER:
        hold = by_kind.get(kind)
        if hold is None:
            continue
        scope = f" for {hold.task_id and 'this task' or 'all tasks'}"
        message = (
            f"{hold.key} limit of {hold.limit} reached{scope} ({hold.source}); this request needs {hold.amount}."
        )
        retry = 1 if kind == KeyKind.CONCURRENCY else seconds_until_reset(hold.window, now)
        return REFUSAL_BY_KIND[kind], message, retry
    raise AssertionError("no failed hold")  # pragma: no cover


def _would_refuse(failed: list[HoldSpec], *, mode: str, now: datetime) -> tuple[str, str]:
    """HARD: the 429 for the first crossed limit. SHADOW/SOFT: (code, message) HARD would have refused."""
    if not failed:
        return "", ""
    code, message, retry_after = _refusal_from(failed, now)
    if mode == "HARD":
        raise TooManyRequests(message, code=code, retry_after=retry_after)
    return code, message


def usage_admit(
    *,
    tenant_id: int,
    user_id: int,
    decision: EnforcementDecision,
    request_id: str,
    mode: str,
    now: datetime,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Admission:
    """Take every hold of one request or none. HARD refuses at the first crossed limit (429);
    SHADOW and SOFT take the hold anyway and record what HARD would have refused.
    PostgreSQL does it in one function call (metering/pg_functions.py), SQLite in Python."""
    reservation = UsageReservation(
        request_id=request_id, tenant_id=tenant_id, user_id=user_id, task_id=decision.task.id,
        enforcement_mode=mode, created_at=now, expires_at=now + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS),
        idempotency_key=idempotency_key, request_fingerprint=fingerprint,
    )
    take = _admit_pg if connection.vendor == "postgresql" else _admit_python
    would_code, would_message = take(reservation=reservation, holds=decision.holds, now=now)
    return Admission(reservation_id=reservation.pk, request_id=request_id, admitted_at=now, enforcement_mode=mode,
                     would_refuse_code=would_code, would_refuse_message=would_message)


def _admit_pg(*, reservation: UsageReservation, holds: list[HoldSpec], now: datetime) -> tuple[str, str]:
    result = meter_sql.admit_pg(reservation=reservation, alert_day=period_start(Window.DAY, now), holds=holds)
    if result["status"] == "in_flight":
        raise IdempotencyInFlight()
    # "refused" (nothing written) is HARD with failed holds: _would_refuse raises its 429.
    would = _would_refuse([holds[i - 1] for i in result["failed"]], mode=reservation.enforcement_mode, now=now)
    _alerts_notify(result["alerts"])
    return would


def _alerts_notify(alert_ids: list[int]) -> None:
    from metering.tasks import alert_notify

    for alert_id in alert_ids:
        # robust: a broker outage must not turn a call that was charged into a 500; the beat sweeper
        # notifies alerts whose task never ran.
        transaction.on_commit(lambda alert_id=alert_id: alert_notify.delay(alert_id), robust=True)


@transaction.atomic
def _admit_python(*, reservation: UsageReservation, holds: list[HoldSpec], now: datetime) -> tuple[str, str]:
    tenant_id, mode = reservation.tenant_id, reservation.enforcement_mode
    meter_ids = meters_ensure(tenant_id=tenant_id, holds=holds)
    ordered = sorted(holds, key=lambda h: meter_ids[_meter_key(tenant_id, h)])  # fixed lock order
    by_meter = {meter_ids[_meter_key(tenant_id, h)]: h for h in ordered}
    values = meter_sql.holds_take([(meter_id, h.amount, h.limit) for meter_id, h in by_meter.items()])
    failed = [h for meter_id, h in by_meter.items() if meter_id not in values]
    if failed and mode != "HARD":
        values.update(meter_sql.holds_force([(meter_ids[_meter_key(tenant_id, h)], h.amount) for h in failed]))
    would = _would_refuse(failed, mode=mode, now=now)  # HARD: raises, rolling the holds back
    try:
        with transaction.atomic():
            reservation.save(force_insert=True)
    except IntegrityError:
        if reservation.idempotency_key is None:
            raise
        raise IdempotencyInFlight() from None
    UsageHold.objects.bulk_create(
        UsageHold(reservation=reservation, meter_id=meter_ids[_meter_key(tenant_id, h)], amount=h.amount,
                  policy_key=h.key, limit_value=h.limit)
        for h in ordered
    )
    _concurrency_alerts(tenant_id=tenant_id, by_meter=by_meter, values=values, now=now)
    return would


def _concurrency_alerts(*, tenant_id: int, by_meter: dict[int, HoldSpec], values: dict[int, tuple[int, int]],
                        now: datetime) -> None:
    for meter_id, hold in by_meter.items():
        if hold.metric != Metric.CONCURRENT or hold.limit <= 0:
            continue
        in_flight = values[meter_id][1]
        if in_flight * 100 >= hold.limit * CONCURRENCY_PERCENT:
            _alert_create(tenant_id=tenant_id, meter_id=meter_id, kind=QuotaAlert.Kind.CONCURRENCY_LIMIT,
                          period=period_start(Window.DAY, now), key=hold.key, limit=hold.limit, observed=in_flight)


def _alert_create(*, tenant_id: int, meter_id: int, kind: str, period: datetime, key: str, limit: int,
                  observed: int) -> None:
    """Once per meter, kind and period: the unique constraint decides, so racing settlements agree."""
    try:
        with transaction.atomic():
            alert = QuotaAlert.objects.create(tenant_id=tenant_id, meter_id=meter_id, kind=kind, period_start=period,
                                              policy_key=key, limit_value=limit, observed_value=observed)
    except IntegrityError:
        return
    _alerts_notify([alert.pk])


def usage_settle(*, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime | None = None) -> UsageLog | None:
    """Move holds to used with the actual amounts and write the ledger row. Idempotent: a second
    settlement, or one after expiry, changes nothing and is logged."""
    now = now or timezone.now()
    # A failed call leaves its Idempotency-Key free for a real retry.
    log = _settle(reservation_id=reservation_id, outcome=outcome, now=now,
                  reservation_status=UsageReservation.Status.COMPLETED,
                  free_key=outcome.status != UsageLog.Status.SUCCESS)
    if log is None:
        logger.warning("settle skipped: reservation %s is not active (already settled or expired)", reservation_id)
        return None
    _log_line(log, decision="allowed")
    return log


def _settle(*, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime, reservation_status: str,
            free_key: bool) -> UsageLog | None:
    """Claim an ACTIVE reservation (None if it is not), move its holds to used, write the ledger row.
    PostgreSQL does it in one function call (metering/pg_functions.py), SQLite in Python."""
    settle = _settle_pg if connection.vendor == "postgresql" else _settle_python
    return settle(reservation_id=reservation_id, outcome=outcome, now=now, reservation_status=reservation_status,
                  free_key=free_key)


def _settle_pg(*, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime, reservation_status: str,
               free_key: bool) -> UsageLog | None:
    result = meter_sql.settle_pg(reservation_id=reservation_id, reservation_status=reservation_status, now=now,
                                 free_key=free_key, outcome=outcome)
    if result is None:
        return None
    if result.get("status") == "lost":
        raise ReservationLost(str(reservation_id))
    _alerts_notify(result["alerts"])
    log = UsageLog(
        pk=result["log_id"], request_id=result["request_id"], reservation_id=reservation_id,
        tenant_id=result["tenant_id"], user_id=result["user_id"], task_id=result["task_id"],
        feature_code=result["feature_code"], provider=outcome.provider, model_name=outcome.model_name,
        model_class=outcome.model_class, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
        api_calls=outcome.api_calls, cost_micro_usd=outcome.cost_micro_usd, latency_ms=outcome.latency_ms,
        status=outcome.status, error_code=outcome.error_code, enforcement_mode=result["enforcement_mode"],
        would_refuse_code=outcome.would_refuse_code, usage_estimated=outcome.usage_estimated,
        attempts=outcome.attempts, admitted_at=datetime.fromisoformat(result["admitted_at"]), created_at=now,
    )
    log.quota_tokens_remaining = result["remaining"]
    return log


@transaction.atomic
def _settle_python(*, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime, reservation_status: str,
                   free_key: bool) -> UsageLog | None:
    update: dict[str, Any] = {"status": reservation_status, "settled_at": now,
                              "response_status": outcome.response_status, "response_body": outcome.response_body}
    if free_key:
        update["idempotency_key"] = None
    claimed = UsageReservation.objects.filter(pk=reservation_id, status=UsageReservation.Status.ACTIVE).update(**update)
    if claimed != 1:
        return None
    reservation = UsageReservation.objects.select_related("task__feature").get(pk=reservation_id)
    return _holds_apply(reservation=reservation, outcome=outcome, now=now)


def _holds_apply(*, reservation: UsageReservation, outcome: CallOutcome, now: datetime) -> UsageLog:
    holds = list(UsageHold.objects.filter(reservation=reservation).select_related("meter").order_by("meter_id"))
    values = meter_sql.holds_move([(h.meter_id, h.amount, outcome.actual(h.meter.metric)) for h in holds])
    log = UsageLog.objects.create(
        request_id=reservation.request_id, reservation=reservation, tenant_id=reservation.tenant_id,
        user_id=reservation.user_id, task_id=reservation.task_id, feature_code=reservation.task.feature.code,
        provider=outcome.provider, model_name=outcome.model_name, model_class=outcome.model_class,
        tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out, api_calls=outcome.api_calls,
        cost_micro_usd=outcome.cost_micro_usd, latency_ms=outcome.latency_ms, status=outcome.status,
        error_code=outcome.error_code, enforcement_mode=reservation.enforcement_mode,
        would_refuse_code=outcome.would_refuse_code, usage_estimated=outcome.usage_estimated,
        attempts=outcome.attempts, admitted_at=reservation.created_at, created_at=now,
    )
    usage_daily_add(log)
    _quota_alerts(reservation=reservation, holds=holds, outcome=outcome, values=values)
    remaining = [h.limit_value - values[h.meter_id][0] - values[h.meter_id][1] for h in holds
                 if h.meter.metric == Metric.TOKENS and POLICY_KEYS[h.policy_key].kind == KeyKind.QUOTA
                 and h.meter_id in values]
    log.quota_tokens_remaining = max(0, min(remaining)) if remaining else None
    return log


_DAILY_SUMS = ("requests", "refused", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd")


def usage_daily_add(log: UsageLog) -> None:
    """Add one ledger row to its per-day rollup: one upsert, in the transaction that wrote the row."""
    table = connection.ops.quote_name(UsageDaily._meta.db_table)
    refused = log.status == UsageLog.Status.REFUSED
    day = log.admitted_at.astimezone(UTC).date()
    values = [log.tenant_id, log.user_id, log.task_id, log.model_name, connection.ops.adapt_datefield_value(day),
              0 if refused else 1, 1 if refused else 0, log.tokens_in, log.tokens_out, log.api_calls,
              log.cost_micro_usd]
    columns = ("tenant_id", "user_id", "task_id", "model_name", "day", *_DAILY_SUMS)
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _DAILY_SUMS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT (tenant_id, user_id, task_id, model_name, day) DO UPDATE SET {updates}",
            values,
        )


def _quota_alerts(*, reservation: UsageReservation, holds: list[UsageHold], outcome: CallOutcome,
                  values: dict[int, tuple[int, int]]) -> None:
    for hold in holds:
        added = outcome.actual(hold.meter.metric)
        if POLICY_KEYS[hold.policy_key].kind != KeyKind.QUOTA or hold.limit_value <= 0 or added <= 0:
            continue
        after = values[hold.meter_id][0]
        before = after - added
        for percent, kind in ((WARN_PERCENT, QuotaAlert.Kind.QUOTA_WARNING),
                              (EXCEEDED_PERCENT, QuotaAlert.Kind.QUOTA_EXCEEDED)):
            threshold = hold.limit_value * percent // 100
            if before < threshold <= after:
                _alert_create(tenant_id=reservation.tenant_id, meter_id=hold.meter_id, kind=kind,
                              period=hold.meter.period_start, key=hold.policy_key, limit=hold.limit_value,
                              observed=after)


def _release(*, reservation_id: uuid.UUID, status: str, error_code: str, now: datetime) -> bool:
    try:
        log = _settle(reservation_id=reservation_id, outcome=CallOutcome(status=UsageLog.Status.EXPIRED,
                      error_code=error_code), now=now, reservation_status=status, free_key=True)
    except ReservationLost:
        return False
    if log is None:
        return False
    _log_line(log, decision=error_code)
    return True


def reservation_release(*, reservation_id: uuid.UUID, reason: str = "released") -> bool:
    """Release a stuck reservation by hand (admin action): holds freed, nothing charged."""
    return _release(reservation_id=reservation_id, status=UsageReservation.Status.RELEASED,
                    error_code=f"released_{reason}"[:64], now=timezone.now())


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release the holds of every lease that stopped renewing. Safe to run from several workers."""
    now = now or timezone.now()
    expired = 0
    ids = UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE, expires_at__lt=now).values_list(
        "pk", flat=True
    )
    for reservation_id in list(ids[:1000]):
        expired += _release(reservation_id=reservation_id, status=UsageReservation.Status.EXPIRED,
                            error_code="lease_expired", now=now)
    return expired


def reservation_renew(*, reservation_id: uuid.UUID, now: datetime | None = None) -> bool:
    """A running call extends its lease so it is never released under it."""
    now = now or timezone.now()
    return bool(
        UsageReservation.objects.filter(pk=reservation_id, status=UsageReservation.Status.ACTIVE).update(
            expires_at=now + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS)
        )
    )


@transaction.atomic
def usage_log_refusal(
    *, request_id: str, tenant_id: int, user_id: int, task_id: int, feature_code: str, code: str, mode: str,
    now: datetime, model_class: str = "",
) -> UsageLog:
    log = UsageLog.objects.create(
        request_id=request_id, tenant_id=tenant_id, user_id=user_id, task_id=task_id, feature_code=feature_code,
        status=UsageLog.Status.REFUSED, error_code=code, enforcement_mode=mode, model_class=model_class,
        admitted_at=now, created_at=now,
    )
    usage_daily_add(log)
    _log_line(log, decision=code)
    return log


def _log_line(log: UsageLog, *, decision: str) -> None:
    # One structured line per metered call: never prompt text, never secrets.
    if not logger.isEnabledFor(logging.INFO):
        return
    logger.info(json.dumps({
        "event": "metered_call", "request_id": log.request_id, "tenant": log.tenant_id, "user": log.user_id,
        "task": log.task_id, "decision": decision, "status": log.status, "provider": log.provider,
        "model": log.model_name, "tokens_in": log.tokens_in, "tokens_out": log.tokens_out,
        "cost_micro_usd": log.cost_micro_usd, "latency_ms": log.latency_ms, "mode": log.enforcement_mode,
        "would_refuse": log.would_refuse_code,
    }))


def idempotency_lookup(*, tenant_id: int, key: str, fingerprint: str) -> UsageReservation | None:
    """The earlier reservation that holds this key, or None. A different body under the same key is a 409."""
    existing = UsageReservation.objects.filter(tenant_id=tenant_id, idempotency_key=key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise Conflict("This Idempotency-Key was used with a different request body.", code="idempotency_conflict")
    return existing


@dataclass(frozen=True)
class MeterDrift:
    meter_id: int
    metric: str
    window: str
    used: int
    expected_used: int
    reserved: int
    expected_reserved: int


def meters_reconcile(*, fix: bool = False) -> list[MeterDrift]:
    """Recompute every meter from the ledger and the holds; report (and optionally fix) drift.

    used     = the actual amounts of the ledger rows whose reservation held that meter;
    reserved = the holds of reservations still ACTIVE.
    """
    ledger = {
        row["meter_id"]: row
        for row in UsageHold.objects.filter(reservation__log__isnull=False).values("meter_id").annotate(
            tokens=Sum(F("reservation__log__tokens_in") + F("reservation__log__tokens_out")),
            cost=Sum("reservation__log__cost_micro_usd"),
            api_calls=Sum("reservation__log__api_calls"),
            requests=Count("id"),
        )
    }
    active = dict(
        UsageHold.objects.filter(reservation__status=UsageReservation.Status.ACTIVE)
        .values("meter_id").annotate(total=Sum("amount")).values_list("meter_id", "total")
    )
    field_for = {Metric.TOKENS: "tokens", Metric.COST: "cost", Metric.API_CALLS: "api_calls",
                 Metric.REQUESTS: "requests"}
    drifts: list[MeterDrift] = []
    for meter in UsageMeter.objects.order_by("pk").iterator():
        row = ledger.get(meter.pk)
        expected_used = 0
        if row is not None and meter.metric in field_for:
            expected_used = row[field_for[meter.metric]] or 0
        expected_reserved = active.get(meter.pk, 0)
        if (meter.used, meter.reserved) != (expected_used, expected_reserved):
            drifts.append(MeterDrift(meter.pk, meter.metric, meter.window, meter.used, expected_used,
                                     meter.reserved, expected_reserved))
            if fix:
                UsageMeter.objects.filter(pk=meter.pk).update(used=expected_used, reserved=expected_reserved)
    return drifts


@transaction.atomic
def alert_notifications_create(*, alert_id: int) -> int:
    """In-app notifications for the tenant's admins. Idempotent: claimed with a conditional update."""
    from metering.models import Notification
    from tenants.models import User

    claimed = QuotaAlert.objects.filter(pk=alert_id, notified_at__isnull=True).update(notified_at=timezone.now())
    if claimed != 1:
        return 0
    alert = QuotaAlert.objects.select_related("meter__task").get(pk=alert_id)
    task = alert.meter.task.code if alert.meter.task_id else "all tasks"
    titles = {
        QuotaAlert.Kind.QUOTA_WARNING: f"{alert.policy_key} is over 80 % ({task})",
        QuotaAlert.Kind.QUOTA_EXCEEDED: f"{alert.policy_key} is used up ({task})",
        QuotaAlert.Kind.CONCURRENCY_LIMIT: f"{alert.policy_key} is at 90 % of its slots ({task})",
    }
    body = f"{alert.observed_value} of {alert.limit_value} ({alert.get_kind_display()})."
    admins = User.objects.filter(tenant_id=alert.tenant_id, role=User.Role.ADMIN, is_active=True)
    Notification.objects.bulk_create(
        [Notification(tenant_id=alert.tenant_id, user=admin, alert=alert, kind=alert.kind,
                      title=titles[alert.kind], body=body) for admin in admins],
        ignore_conflicts=True,
    )
    return admins.count()


@transaction.atomic
def policy_rule_set(
    *,
    scope: str,
    key: str,
    value: Any,
    plan: Any = None,
    tenant: Any = None,
    user: Any = None,
    task: Any = None,
    weekdays: list[int] | None = None,
    start_time: Any = None,
    end_time: Any = None,
    timezone_name: str = "UTC",
    when_quota_key: str = "",
    when_usage_percent_gte: int | None = None,
    note: str = "",
    actor: Any = None,
    source: str | None = None,
) -> PolicyRule:
    """Create or update the one rule for (scope, subject, task, key, window, condition), validated.
    The change is recorded in the audit log (`actor` / `source`: see tenants.audit)."""
    from metering.policy import policy_cache_invalidate
    from metering.policy_keys import PolicyValueError, validate_value

    try:
        canonical = validate_value(key, value)
        if when_quota_key:
            quota = POLICY_KEYS.get(when_quota_key)
            if quota is None or quota.kind != KeyKind.QUOTA:
                raise PolicyValueError(f"'{when_quota_key}' is not a quota key; a condition must name one.")
            if when_usage_percent_gte is None or not (0 < when_usage_percent_gte <= 100):
                raise PolicyValueError("A usage condition needs a percentage between 1 and 100.")
        elif when_usage_percent_gte is not None:
            raise PolicyValueError("A usage percentage needs the quota key it is a percentage of.")
        if weekdays is not None and (not weekdays or any(d not in range(7) for d in weekdays)):
            raise PolicyValueError("weekdays are numbers 0 (Monday) to 6 (Sunday).")
        try:
            zoneinfo.ZoneInfo(timezone_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PolicyValueError(f"Unknown time zone '{timezone_name}'.") from None
    except PolicyValueError as error:
        raise BadRequest(str(error), code="invalid_policy") from None
    subjects = {PolicyRule.Scope.GLOBAL: {}, PolicyRule.Scope.PLAN: {"plan": plan},
                PolicyRule.Scope.TENANT: {"tenant": tenant}, PolicyRule.Scope.USER: {"user": user}}
    if scope not in subjects:
        raise BadRequest("scope must be GLOBAL, PLAN, TENANT or USER.", code="invalid_policy")
    subject = subjects[scope]
    if any(v is None for v in subject.values()):
        raise BadRequest(f"A {scope} rule needs its {', '.join(subject)}.", code="invalid_policy")
    lookup = {"scope": scope, "plan": None, "tenant": None, "user": None, **subject, "task": task, "key": key,
              "weekdays": weekdays, "start_time": start_time, "end_time": end_time,
              "when_quota_key": when_quota_key}
    if weekdays is None:
        lookup["weekdays__isnull"] = True
        del lookup["weekdays"]
    rule = PolicyRule.objects.filter(**lookup).first()
    before = policy_rule_snapshot(rule) if rule is not None else None
    if rule is None:
        lookup.pop("weekdays__isnull", None)
        rule = PolicyRule(**{**lookup, "weekdays": weekdays})
    rule.value = canonical
    rule.timezone = timezone_name
    rule.when_usage_percent_gte = when_usage_percent_gte
    rule.note = note or rule.note
    rule.is_active = True
    rule.seeded = False  # an operator's rule: a re-seed never touches it
    rule.save()
    after = policy_rule_snapshot(rule)
    if before is not None:
        before, after = changed_fields(before, after)
    audit_record(action="policy_rule.update" if before is not None else "policy_rule.create",
                 object_type="policy_rule", object_id=rule.pk,
                 tenant=rule.tenant_id or getattr(user, "tenant_id", None),
                 before=before, after=after, actor=actor, source=source)
    transaction.on_commit(policy_cache_invalidate)
    return rule


def policy_rule_snapshot(rule: PolicyRule) -> dict[str, Any]:
    """What an audit event shows of a rule."""
    return {
        "scope": rule.scope, "plan": rule.plan.code if rule.plan_id else None,
        "tenant": rule.tenant.slug if rule.tenant_id else None,
        "user": rule.user.username if rule.user_id else None, "task": rule.task.code if rule.task_id else None,
        "key": rule.key, "value": rule.value, "weekdays": rule.weekdays,
        "start_time": rule.start_time.isoformat() if rule.start_time else None,
        "end_time": rule.end_time.isoformat() if rule.end_time else None, "timezone": rule.timezone,
        "when_quota_key": rule.when_quota_key, "when_usage_percent_gte": rule.when_usage_percent_gte,
        "is_active": rule.is_active, "note": rule.note,
    }
