"""Holds and settlement (DESIGN.md §3): admission takes every hold of one request or none, in one
short transaction; settlement moves the holds to used with the actual amounts and writes the one
immutable ledger row, exactly once; a lease that stops renewing expires and releases its holds, and
a settlement that comes after that still charges what the call used (flagged `settled_late`).

The two implementations (PostgreSQL function, Python) are in `metering/services/backends.py`;
everything here is the same whichever runs.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from gateway_project.errors import Conflict, TooManyRequests
from metering import meter_sql
from metering.alerts.models import QuotaAlert
from metering.meter_start import meters_create
from metering.models import Metric, UsageHold, UsageLog, UsageMeter, UsageReservation, Window
from metering.periods import seconds_until_reset
from metering.policy import EnforcementDecision, HoldSpec, policy_setting
from metering.policy_keys import POLICY_KEYS, KeyKind
from metering.rules import REFUSAL_BY_KIND, REFUSAL_ORDER, CallOutcome
from metering.services import thresholds
from metering.services.backends import AdmitResult, ReservationLost, alert_day, holds_backend
from metering.services.ledger import _log_line

logger = logging.getLogger("gateway.metering")

__all__ = ["Admission", "IdempotencyInFlight", "ReservationLost", "idempotency_lookup", "meters_ensure",
           "reservation_release", "reservation_renew", "reservations_expire", "usage_admit", "usage_settle"]


class IdempotencyInFlight(Exception):
    """Another request with the same Idempotency-Key holds the key; the caller waits for its result."""


@dataclass
class Admission:
    reservation_id: uuid.UUID
    request_id: str
    admitted_at: datetime
    enforcement_mode: str
    would_refuse_code: str = ""
    would_refuse_message: str = ""
    # Every crossed limit HARD would have refused for, the one it would have returned first.
    would_refuse: list[dict] = field(default_factory=list)


def _meter_key(tenant_id: int, hold: HoldSpec) -> tuple:
    return (tenant_id, hold.user_id, hold.task_id, hold.metric, hold.window, hold.period_start, hold.api_key_id)


def _meter_ids(keys: set[tuple]) -> dict[tuple, int]:
    q = Q()
    for k in keys:
        q |= Q(tenant_id=k[0], user_id=k[1], task_id=k[2], metric=k[3], window=k[4], period_start=k[5],
               api_key_id=k[6])
    return {
        (r["tenant_id"], r["user_id"], r["task_id"], r["metric"], r["window"], r["period_start"],
         r["api_key_id"]): r["id"]
        for r in UsageMeter.objects.filter(q).values("id", "tenant_id", "user_id", "task_id", "metric", "window",
                                                     "period_start", "api_key_id")
    }


def meters_ensure(*, tenant_id: int, holds: list[HoldSpec], now: datetime | None = None) -> dict[tuple, int]:
    """Meter ids for these holds, creating missing rows (safe under races). A meter created during
    its period starts from what the ledger already holds for it (metering/meter_start.py)."""
    by_key = {_meter_key(tenant_id, h): h for h in holds}
    if not by_key:
        return {}
    found = _meter_ids(set(by_key))
    missing = by_key.keys() - found.keys()
    if missing:
        meters_create(tenant_id=tenant_id, holds=[by_key[k] for k in missing])
        found.update(_meter_ids(missing))
    return found


_PERIOD_WORDS = {Window.MINUTE: " this minute", Window.DAY: " today (UTC)", Window.MONTH: " this month (UTC)"}


def _amount(hold: HoldSpec, value: int) -> str:
    if hold.metric == Metric.COST:
        return f"${Decimal(value) / 1_000_000:f}"  # the meter counts micro-USD; people read dollars
    return f"{value} {POLICY_KEYS[hold.key].unit.split('/')[0]}"


def _refusal_message(hold: HoldSpec, usage: tuple[int, int] | None, decision: EnforcementDecision) -> str:
    """What the caller needs to act on: what is used, what is left, and what this call would need."""
    scope = "this task" if hold.task_id else "all tasks"
    kind = POLICY_KEYS[hold.key].kind
    if kind == KeyKind.CONCURRENCY:
        in_flight = f"{usage[1]} of {hold.limit}" if usage else f"all {hold.limit}"
        return f"{hold.key} reached for {scope} ({hold.source}): {in_flight} calls in flight; retry when one ends."
    needs = f"this request needs {_amount(hold, hold.amount)}"
    if usage is None:
        return f"{hold.key} would be exceeded for {scope} ({hold.source}): the limit is {_amount(hold, hold.limit)}; " \
               f"{needs}."
    used, reserved = usage
    left = max(0, hold.limit - used - reserved)
    message = (f"{hold.key} would be exceeded for {scope} ({hold.source}): {_amount(hold, used)} used of "
               f"{_amount(hold, hold.limit)}{_PERIOD_WORDS.get(hold.window, '')}, {_amount(hold, reserved)} held by "
               f"calls in progress, {_amount(hold, left)} left; {needs}")
    if hold.metric == Metric.TOKENS and hold.amount > 1:
        steps = f"{decision.steps} steps of " if decision.steps > 1 else ""
        out = hold.amount // decision.steps - decision.tokens_in  # what the hold was computed from
        message += f" ({steps}{decision.tokens_in} in + up to {out} out)"
    elif hold.metric == Metric.COST:
        message += " (its worst case on the most expensive candidate model)"
    message += "."
    if decision.max_tokens_fitted is not None:
        # Fitting read usage a moment old; calls that settled or started since took the rest.
        message += f" max_tokens was already shrunk to {decision.max_tokens_fitted} to fit; other calls took the rest."
    elif hold.metric == Metric.TOKENS and decision.steps == 1 and (room := left - decision.tokens_in) > 0:
        fitting = ("budget fitting goes no lower than fit_min_max_tokens" if policy_setting(
            decision, "fit_max_tokens_to_budget") else "budget fitting is off (fit_max_tokens_to_budget)")
        message += f" It would fit with max_tokens {room} or less ({fitting})."
    return message


def _refusal(holds: list[HoldSpec], failed: list[int], failed_usage: dict[int, tuple[int, int]],
             decision: EnforcementDecision, now: datetime) -> tuple[str, str, int, HoldSpec]:
    """(code, message, Retry-After, hold) for the crossed limit that matters most: quotas before
    concurrency before rates; of one kind, the one with the least left."""
    def left(index: int) -> int:
        used, reserved = failed_usage.get(index, (0, 0))
        return holds[index].limit - used - reserved

    for kind in REFUSAL_ORDER:
        of_kind = [i for i in failed if POLICY_KEYS[holds[i].key].kind == kind]
        if not of_kind:
            continue
        index = min(of_kind, key=left)
        hold = holds[index]
        message = _refusal_message(hold, failed_usage.get(index), decision)
        retry = 1 if kind == KeyKind.CONCURRENCY else seconds_until_reset(hold.window, now)
        return REFUSAL_BY_KIND[kind], message, retry, hold
    raise AssertionError("no failed hold")  # pragma: no cover


def _reasons(holds: list[HoldSpec], failed: list[int], *, first: HoldSpec) -> list[dict]:
    """Every crossed limit as {"code", "key", "rule"}: the one HARD returns first, then the others in
    refusal order (quotas, concurrency, rates)."""
    def code(hold: HoldSpec) -> str:
        return REFUSAL_BY_KIND[POLICY_KEYS[hold.key].kind]

    ordered = sorted((holds[i] for i in failed),
                     key=lambda h: (h is not first, REFUSAL_ORDER.index(POLICY_KEYS[h.key].kind)))
    return [{"code": code(h), "key": h.key, "rule": h.rule_id} for h in ordered]


def _refusal_alerts(*, tenant_id: int, holds: list[HoldSpec], result: AdmitResult) -> None:
    """A quota's first refusal (SHADOW and SOFT: the first HARD would have made) raises its
    QUOTA_EXCEEDED alert, once per meter and period. Worst-case holds refuse before `used` reaches
    the limit, so the 100 % crossing at settlement alone would often never come. Own short
    transaction: in HARD mode the admission wrote nothing. Rates and concurrency raise none here."""
    quota = {result.failed_meters[i]: i for i in result.failed
             if i in result.failed_meters and POLICY_KEYS[holds[i].key].kind == KeyKind.QUOTA}
    if not quota:
        return
    try:
        raised = set(QuotaAlert.objects.filter(meter_id__in=quota, kind=QuotaAlert.Kind.QUOTA_EXCEEDED)
                     .values_list("meter_id", flat=True))  # a read, not a failing insert, on every later refusal
        for meter_id, index in quota.items():
            if meter_id in raised:
                continue
            hold = holds[index]
            used, reserved = result.failed_usage.get(index, (0, 0))
            thresholds.alert_create(tenant_id=tenant_id, meter_id=meter_id, kind=QuotaAlert.Kind.QUOTA_EXCEEDED,
                                    period=hold.period_start, key=hold.key, limit=hold.limit,
                                    observed=used + reserved)
    except DatabaseError:
        # The refusal stands whatever happens to its alert.
        logger.exception("could not record the QUOTA_EXCEEDED alert of a refusal (tenant %s)", tenant_id)


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
    api_key_id: int | None = None,
) -> Admission:
    """Take every hold of one request or none. HARD refuses at the first crossed limit (429);
    SHADOW and SOFT take the hold anyway and record what HARD would have refused."""
    reservation = UsageReservation(
        request_id=request_id, tenant_id=tenant_id, user_id=user_id, task_id=decision.task.id,
        enforcement_mode=mode, created_at=now, expires_at=now + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS),
        idempotency_key=idempotency_key, request_fingerprint=fingerprint, api_key_id=api_key_id,
    )
    holds = decision.holds
    result = holds_backend().admit(reservation=reservation, holds=holds, alert_day=alert_day(now))
    if result.status == "in_flight":
        raise IdempotencyInFlight()
    thresholds.alerts_notify(result.alerts)
    admission = Admission(reservation_id=reservation.pk, request_id=request_id, admitted_at=now,
                          enforcement_mode=mode)
    if result.failed:
        _refusal_alerts(tenant_id=tenant_id, holds=holds, result=result)
        code, message, retry_after, hold = _refusal(holds, result.failed, result.failed_usage, decision, now)
        if result.status == "refused":
            raise TooManyRequests(message, code=code, retry_after=retry_after)
        admission.would_refuse_code, admission.would_refuse_message = code, message
        admission.would_refuse = _reasons(holds, result.failed, first=hold)
    return admission


def usage_settle(*, reservation_id: uuid.UUID, outcome: CallOutcome, now: datetime | None = None) -> UsageLog | None:
    """Move holds to used with the actual amounts and write the ledger row. Idempotent: a second
    settlement changes nothing and is logged. After expiry it still charges (`settled_late`)."""
    now = now or timezone.now()
    # A failed call leaves its Idempotency-Key free for a real retry.
    settled = holds_backend().settle(reservation_id=reservation_id, outcome=outcome, now=now,
                                     free_key=outcome.status != UsageLog.Status.SUCCESS)
    if settled is None:
        logger.warning("settle skipped: reservation %s was settled already", reservation_id)
        return None
    thresholds.alerts_notify(settled.alerts)
    if settled.late:
        logger.warning("reservation %s settled after its lease expired: charged %s tokens, %s micro-USD",
                       reservation_id, outcome.tokens_in + outcome.tokens_out, outcome.cost_micro_usd)
    _log_line(settled.log, decision="settled_late" if settled.late else "allowed")
    return settled.log


@transaction.atomic
def _release(*, reservation_id: uuid.UUID, status: str, now: datetime) -> bool:
    """Free the holds of an ACTIVE reservation, charging nothing (the call may still settle late).
    Writes no ledger row: a call is in the ledger once, when it reports what it used."""
    claimed = UsageReservation.objects.filter(pk=reservation_id, status=UsageReservation.Status.ACTIVE).update(
        status=status, settled_at=now, idempotency_key=None)
    if claimed != 1:
        return False
    holds = list(UsageHold.objects.filter(reservation_id=reservation_id).order_by("meter_id")
                 .values_list("meter_id", "amount"))
    meter_sql.meters_lock([meter_id for meter_id, _ in holds])
    meter_sql.holds_move([(meter_id, amount, 0) for meter_id, amount in holds])
    logger.info("reservation %s %s: holds released", reservation_id, status.lower())
    return True


def reservation_release(*, reservation_id: uuid.UUID, reason: str = "released") -> bool:
    """Release a stuck reservation by hand (admin action): holds freed, nothing charged."""
    released = _release(reservation_id=reservation_id, status=UsageReservation.Status.RELEASED, now=timezone.now())
    if released:
        logger.warning("reservation %s released by hand (%s)", reservation_id, reason)
    return released


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release the holds of every lease that stopped renewing. Safe to run from several workers."""
    now = now or timezone.now()
    ids = UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE, expires_at__lt=now).values_list(
        "pk", flat=True
    )
    return sum(_release(reservation_id=reservation_id, status=UsageReservation.Status.EXPIRED, now=now)
               for reservation_id in list(ids[:1000]))


def reservation_renew(*, reservation_id: uuid.UUID, now: datetime | None = None) -> bool:
    """A running call extends its lease so it is never released under it."""
    now = now or timezone.now()
    return bool(
        UsageReservation.objects.filter(pk=reservation_id, status=UsageReservation.Status.ACTIVE).update(
            expires_at=now + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS)
        )
    )


def idempotency_lookup(*, tenant_id: int, key: str, fingerprint: str) -> UsageReservation | None:
    """The earlier reservation that holds this key, or None. A different body under the same key is a 409."""
    existing = UsageReservation.objects.filter(tenant_id=tenant_id, idempotency_key=key).first()
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise Conflict("This Idempotency-Key was used with a different request body.", code="idempotency_conflict")
    return existing

