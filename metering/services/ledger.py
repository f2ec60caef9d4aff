"""The ledger's companions: the per-day rollup kept in the same transaction as each ledger row, the
rows of refused calls, the one log line per metered call, and reconciliation of meters with the
ledger."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection, transaction
from django.db.models import Count, F, Sum

from metering.models import Metric, UsageDaily, UsageHold, UsageLog, UsageMeter, UsageReservation, WouldRefuseDaily
from metering.rules import would_refuse_rollup_rows

logger = logging.getLogger("gateway.metering")

_DAILY_SUMS = ("requests", "refused", "tokens_in", "tokens_out", "tokens_cached_in", "tokens_cache_write",
               "api_calls", "cost_micro_usd", "search_fees_micro_usd")


def usage_daily_add(log: UsageLog) -> None:
    """Add one ledger row to its per-day rollup: one upsert, in the transaction that wrote the row."""
    table = connection.ops.quote_name(UsageDaily._meta.db_table)
    refused = log.status == UsageLog.Status.REFUSED
    day = log.admitted_at.astimezone(UTC).date()
    values = [log.tenant_id, log.user_id, log.task_id, log.model_name, connection.ops.adapt_datefield_value(day),
              0 if refused else 1, 1 if refused else 0, log.tokens_in, log.tokens_out, log.tokens_cached_in,
              log.tokens_cache_write, log.api_calls, log.cost_micro_usd, log.search_fees_micro_usd]
    columns = ("tenant_id", "user_id", "task_id", "model_name", "day", *_DAILY_SUMS)
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _DAILY_SUMS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT (tenant_id, user_id, task_id, model_name, day) DO UPDATE SET {updates}",
            values,
        )
    would_refuse_daily_add(log)


_WOULD_REFUSE_SUMS = ("calls", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd")


def would_refuse_daily_add(log: UsageLog) -> None:
    """A call SHADOW/SOFT let through that HARD would have refused: add it to the would-refuse rollup,
    once in the row that counts calls and once per reason (metering/rules.py would_refuse_rollup_rows).
    One upsert, in the transaction that wrote the ledger row; nothing for any other call."""
    rows = would_refuse_rollup_rows(log.would_refuse or [])
    if not rows:
        return
    table = connection.ops.quote_name(WouldRefuseDaily._meta.db_table)
    day = connection.ops.adapt_datefield_value(log.admitted_at.astimezone(UTC).date())
    columns = ("tenant_id", "day", "task_id", "code", "rule_id", "policy_key", *_WOULD_REFUSE_SUMS)
    params = [value for code, rule_id, key in rows for value in (
        log.tenant_id, day, log.task_id, code, rule_id, key, 1, log.tokens_in, log.tokens_out, log.api_calls,
        log.cost_micro_usd)]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _WOULD_REFUSE_SUMS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * len(rows))} "
            f"ON CONFLICT (tenant_id, day, task_id, code, rule_id, policy_key) DO UPDATE SET {updates}",
            params,
        )


@transaction.atomic
def usage_log_refusal(
    *, request_id: str, tenant_id: int, user_id: int, task_id: int, feature_code: str, code: str, mode: str,
    now: datetime, model_class: str = "", api_key_id: int | None = None,
) -> UsageLog:
    log = UsageLog.objects.create(
        request_id=request_id, tenant_id=tenant_id, user_id=user_id, task_id=task_id, feature_code=feature_code,
        api_key_id=api_key_id,
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

    used     = the meter's baseline (what the rollup held for its subject and period when the meter
               was created: metering/meter_start.py) + the actual amounts of the ledger rows whose
               reservation held that meter. Exact: a call that settled before the meter was created
               is in the baseline, any later one through a hold (calls in flight then were adopted),
               never both;
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
        expected_used = meter.baseline
        if row is not None and meter.metric in field_for:
            expected_used += row[field_for[meter.metric]] or 0
        expected_reserved = active.get(meter.pk, 0)
        if (meter.used, meter.reserved) != (expected_used, expected_reserved):
            drifts.append(MeterDrift(meter.pk, meter.metric, meter.window, meter.used, expected_used,
                                     meter.reserved, expected_reserved))
            if fix:
                UsageMeter.objects.filter(pk=meter.pk).update(used=expected_used, reserved=expected_reserved)
    return drifts

