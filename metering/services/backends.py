"""The two implementations of the holds contract (DESIGN.md §3), behind one interface.

- `PostgresHolds`: admission and settlement are one call each of a SQL function
  (metering/pg_functions.py): one round trip, meters locked in id order inside the function.
- `PythonHolds`: the same contract in Python (set-based statements, one per step). SQLite, the
  embedded default, serializes writers (BEGIN IMMEDIATE); on PostgreSQL it locks the meters in id
  order first, so it is correct there too, and the one abstract test suite runs it on both databases.

Both take the same inputs and return the same results; tests/metering/test_holds_contract.py is the
suite that holds them to it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from metering import meter_sql
from metering.models import Metric, UsageHold, UsageLog, UsageReservation, Window
from metering.periods import period_start
from metering.policy import HoldSpec
from metering.policy_keys import POLICY_KEYS, KeyKind
from metering.rules import CallOutcome
from metering.services import thresholds
from metering.services.ledger import usage_daily_add

# Reservations a late settlement may still charge: their holds were released under them.
RELEASED_STATUSES = (UsageReservation.Status.EXPIRED, UsageReservation.Status.RELEASED)


class ReservationLost(Exception):
    """The reservation does not exist (its admission was lost in a database crash): the caller
    must keep the usage another way (the spool)."""


@dataclass
class AdmitResult:
    status: str  # "admitted" | "refused" (HARD, nothing written) | "in_flight" (the Idempotency-Key is taken)
    failed: list[int] = field(default_factory=list)  # indexes into the holds that would cross their limit
    # For each failed hold: (used, reserved) of its meter when admission looked.
    failed_usage: dict[int, tuple[int, int]] = field(default_factory=dict)
    # For each failed hold: its meter's id (a refused quota raises QUOTA_EXCEEDED on that meter).
    failed_meters: dict[int, int] = field(default_factory=dict)
    alerts: list[int] = field(default_factory=list)


@dataclass
class SettleResult:
    log: UsageLog
    alerts: list[int]
    late: bool  # the lease had expired (or was released) before this settlement came


class HoldsBackend(Protocol):
    name: str

    def admit(self, *, reservation: UsageReservation, holds: list[HoldSpec], alert_day: datetime) -> AdmitResult:
        """Take every hold or, in HARD mode, none when any would cross its limit; SHADOW and SOFT
        take them all and report the ones that crossed. Creates the reservation and its hold rows."""

    def settle(self, *, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime,
               free_key: bool) -> SettleResult | None:
        """Move the holds to used with the actual amounts and write the ledger row, exactly once.
        None if the reservation was settled already; a reservation whose lease expired is still
        charged (late). Raises ReservationLost if there is no such reservation."""


def _meter_key(tenant_id: int, hold: HoldSpec) -> tuple:
    return (tenant_id, hold.user_id, hold.task_id, hold.metric, hold.window, hold.period_start, hold.api_key_id)


class PythonHolds:
    name = "python"

    @transaction.atomic
    def admit(self, *, reservation: UsageReservation, holds: list[HoldSpec], alert_day: datetime) -> AdmitResult:
        from metering.services.holds import meters_ensure

        tenant_id, mode = reservation.tenant_id, reservation.enforcement_mode
        meter_ids = meters_ensure(tenant_id=tenant_id, holds=holds, now=reservation.created_at)
        index_of = {meter_ids[_meter_key(tenant_id, h)]: i for i, h in enumerate(holds)}
        by_meter = {m: holds[i] for m, i in sorted(index_of.items())}  # fixed lock order: meter id
        meter_sql.meters_lock(list(by_meter))
        values = meter_sql.holds_take([(meter_id, h.amount, h.limit) for meter_id, h in by_meter.items()])
        failed_ids = [meter_id for meter_id in by_meter if meter_id not in values]
        failed = sorted(index_of[m] for m in failed_ids)
        failed_usage = meter_sql.meters_usage(failed_ids) if failed_ids else {}
        result = AdmitResult(status="admitted", failed=failed,
                             failed_usage={index_of[m]: usage for m, usage in failed_usage.items()},
                             failed_meters={index_of[m]: m for m in failed_ids})
        if failed and mode == "HARD":
            # The holds taken go back; the meters stay, as the PostgreSQL function leaves them: the
            # refusal's QUOTA_EXCEEDED alert points at them.
            meter_sql.holds_move([(meter_id, by_meter[meter_id].amount, 0) for meter_id in values])
            result.status = "refused"
            return result
        if failed:
            values.update(meter_sql.holds_force([(m, by_meter[m].amount) for m in failed_ids]))
        try:
            with transaction.atomic():
                reservation.save(force_insert=True)
        except IntegrityError:
            if reservation.idempotency_key is None:
                raise
            # As for a refusal: the holds go back, the meters stay (as the PostgreSQL function,
            # which finds the key taken after it created them, leaves them).
            meter_sql.holds_move([(meter_id, by_meter[meter_id].amount, 0) for meter_id in values])
            return AdmitResult(status="in_flight")
        UsageHold.objects.bulk_create(
            UsageHold(reservation=reservation, meter_id=meter_id, amount=h.amount, policy_key=h.key,
                      limit_value=h.limit)
            for meter_id, h in by_meter.items()
        )
        thresholds.concurrency_alerts(tenant_id=tenant_id, by_meter=by_meter, values=values,
                                      now=reservation.created_at)
        return result

    @transaction.atomic
    def settle(self, *, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime,
               free_key: bool) -> SettleResult | None:
        update: dict[str, Any] = {"status": UsageReservation.Status.COMPLETED, "settled_at": now,
                                  "response_status": outcome.response_status, "response_body": outcome.response_body}
        if free_key:
            update["idempotency_key"] = None
        reservations = UsageReservation.objects.filter(pk=reservation_id)
        late = False
        if reservations.filter(status=UsageReservation.Status.ACTIVE).update(**update) != 1:
            # The lease ran out (or an operator released it) while the call was still running: its
            # holds are gone, but what it used is charged all the same.
            late = reservations.filter(status__in=RELEASED_STATUSES, log__isnull=True).update(**update) == 1
            if not late:
                if not reservations.exists():
                    raise ReservationLost(str(reservation_id))
                return None
        reservation = UsageReservation.objects.select_related("task__feature").get(pk=reservation_id)
        holds = list(UsageHold.objects.filter(reservation=reservation).select_related("meter").order_by("meter_id"))
        meter_sql.meters_lock([h.meter_id for h in holds])
        values = meter_sql.holds_move([(h.meter_id, 0 if late else h.amount, outcome.actual(h.meter.metric))
                                       for h in holds])
        log = UsageLog.objects.create(
            request_id=reservation.request_id, reservation=reservation, tenant_id=reservation.tenant_id,
            user_id=reservation.user_id, task_id=reservation.task_id, feature_code=reservation.task.feature.code,
            api_key_id=reservation.api_key_id,
            provider=outcome.provider, model_name=outcome.model_name, model_class=outcome.model_class,
            tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out, api_calls=outcome.api_calls,
            tokens_cached_in=outcome.tokens_cached_in, tokens_cache_write=outcome.tokens_cache_write,
            cost_micro_usd=outcome.cost_micro_usd, search_fees_micro_usd=outcome.search_fees_micro_usd,
            latency_ms=outcome.latency_ms, status=outcome.status,
            error_code=outcome.error_code, enforcement_mode=reservation.enforcement_mode,
            would_refuse_code=outcome.would_refuse_code, would_refuse=outcome.would_refuse,
            usage_estimated=outcome.usage_estimated,
            attempts=outcome.attempts, settled_late=late, max_tokens_fitted=outcome.max_tokens_fitted,
            admitted_at=reservation.created_at, created_at=now,
        )
        usage_daily_add(log)
        thresholds.quota_alerts(tenant_id=reservation.tenant_id, holds=holds, outcome=outcome, values=values)
        remaining = [h.limit_value - values[h.meter_id][0] - values[h.meter_id][1] for h in holds
                     if h.meter.metric == Metric.TOKENS and POLICY_KEYS[h.policy_key].kind == KeyKind.QUOTA
                     and h.meter_id in values]
        log.quota_tokens_remaining = max(0, min(remaining)) if remaining else None
        return SettleResult(log=log, alerts=[], late=late)  # alerts were created (and enqueued) above


class PostgresHolds:
    name = "postgres"

    def admit(self, *, reservation: UsageReservation, holds: list[HoldSpec], alert_day: datetime) -> AdmitResult:
        result = meter_sql.admit_pg(reservation=reservation, alert_day=alert_day, holds=holds)
        failed = [i - 1 for i in result.get("failed", [])]
        usage = result.get("failed_usage") or []
        return AdmitResult(status=result["status"], failed=failed,
                           failed_usage={i: (u[0], u[1]) for i, u in zip(failed, usage, strict=False)},
                           failed_meters=dict(zip(failed, result.get("failed_meters") or [], strict=False)),
                           alerts=result.get("alerts", []))

    def settle(self, *, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime,
               free_key: bool) -> SettleResult | None:
        result = meter_sql.settle_pg(reservation_id=reservation_id, now=now, free_key=free_key, outcome=outcome)
        if result is None:
            return None
        if result.get("status") == "lost":
            raise ReservationLost(str(reservation_id))
        log = UsageLog(
            pk=result["log_id"], request_id=result["request_id"], reservation_id=reservation_id,
            tenant_id=result["tenant_id"], user_id=result["user_id"], task_id=result["task_id"],
            api_key_id=result.get("api_key_id"),
            feature_code=result["feature_code"], provider=outcome.provider, model_name=outcome.model_name,
            model_class=outcome.model_class, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
            tokens_cached_in=outcome.tokens_cached_in, tokens_cache_write=outcome.tokens_cache_write,
            api_calls=outcome.api_calls, cost_micro_usd=outcome.cost_micro_usd,
            search_fees_micro_usd=outcome.search_fees_micro_usd, latency_ms=outcome.latency_ms,
            status=outcome.status, error_code=outcome.error_code, enforcement_mode=result["enforcement_mode"],
            would_refuse_code=outcome.would_refuse_code, would_refuse=outcome.would_refuse,
            usage_estimated=outcome.usage_estimated,
            attempts=outcome.attempts, settled_late=bool(result.get("late")),
            max_tokens_fitted=outcome.max_tokens_fitted,
            admitted_at=datetime.fromisoformat(result["admitted_at"]), created_at=now,
        )
        log.quota_tokens_remaining = result["remaining"]
        return SettleResult(log=log, alerts=result["alerts"], late=bool(result.get("late")))


_BACKENDS: dict[str, HoldsBackend] = {"python": PythonHolds(), "postgres": PostgresHolds()}


def holds_backend() -> HoldsBackend:
    """PostgreSQL's function where it runs, else Python; `METERING_HOLDS_BACKEND=python` forces the
    Python implementation (the contract suite runs both on PostgreSQL)."""
    forced = settings.METERING_HOLDS_BACKEND
    if forced:
        return _BACKENDS[forced]
    return _BACKENDS["postgres" if connection.vendor == "postgresql" else "python"]


def alert_day(now: datetime) -> datetime:
    return period_start(Window.DAY, now)
