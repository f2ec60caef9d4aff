"""Durable usage spool for SHADOW/SOFT when the metering database is unreachable.

A call that ran while the database was down is written here as one JSON file (written to a
temporary name, fsynced, renamed: a crash never leaves half a record). `spool_replay` records
each file in one transaction (ledger row + meters) and deletes it after commit. The ledger's
unique request_id makes a replay after a crash between commit and delete a no-op: exactly once.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from metering.models import UsageHold, UsageLog, UsageMeter, UsageReservation
from metering.policy import HoldSpec
from metering.services import CallOutcome, _log_line, meters_ensure, usage_daily_add, usage_settle

logger = logging.getLogger("gateway.metering.spool")


def _dir() -> Path:
    path = Path(settings.METERING_SPOOL_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def spool_write(
    *, request_id: str, tenant_id: int, user_id: int, task_id: int, feature_code: str, mode: str,
    admitted_at: datetime, holds: list[HoldSpec], outcome: CallOutcome, would_refuse_code: str = "",
) -> Path:
    record = {
        "request_id": request_id, "tenant_id": tenant_id, "user_id": user_id, "task_id": task_id,
        "feature_code": feature_code, "mode": mode, "admitted_at": admitted_at.isoformat(),
        "would_refuse_code": would_refuse_code,
        "holds": [{**asdict(h), "period_start": h.period_start.isoformat()} for h in holds],
        "outcome": {k: v for k, v in asdict(outcome).items() if k not in ("response_body",)},
    }
    directory = _dir()
    final = directory / f"{request_id}.json"
    temporary = directory / f".{request_id}.tmp"
    with open(temporary, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    logger.warning("metering database unavailable: usage of %s spooled to disk", request_id)
    return final


def spool_pending() -> int:
    return sum(1 for _ in _dir().glob("*.json"))


def spool_replay() -> int:
    """Record every spooled call. Returns how many were recorded now."""
    recorded = 0
    for path in sorted(_dir().glob("*.json")):
        record = json.loads(path.read_text())
        try:
            recorded += _replay_one(record)
        except IntegrityError:
            pass  # already recorded by an earlier replay that crashed before deleting the file
        path.unlink(missing_ok=True)
    return recorded


@transaction.atomic
def _replay_one(record: dict) -> int:
    admitted_at = datetime.fromisoformat(record["admitted_at"])
    outcome = CallOutcome(**record["outcome"])
    if UsageLog.objects.filter(request_id=record["request_id"]).exists():
        return 0  # recorded already (a replay that crashed before deleting the file, or a settled call)
    admitted = UsageReservation.objects.filter(
        request_id=record["request_id"], status=UsageReservation.Status.ACTIVE
    ).values_list("pk", flat=True).first()
    if admitted is not None:
        # Admitted while the database was up, spooled because settlement failed: settle the
        # reservation (its holds become the actual usage) instead of losing the record.
        return 1 if usage_settle(reservation_id=admitted, outcome=outcome) is not None else 0
    holds = [HoldSpec(**{**h, "period_start": datetime.fromisoformat(h["period_start"])}) for h in record["holds"]]
    reservation = UsageReservation.objects.create(
        request_id=record["request_id"], tenant_id=record["tenant_id"], user_id=record["user_id"],
        task_id=record["task_id"], status=UsageReservation.Status.COMPLETED, enforcement_mode=record["mode"],
        created_at=admitted_at, expires_at=admitted_at, settled_at=admitted_at,
    )
    meter_ids = meters_ensure(tenant_id=record["tenant_id"], holds=holds)
    for hold in holds:
        meter_id = meter_ids[(record["tenant_id"], hold.user_id, hold.task_id, hold.metric, hold.window,
                              hold.period_start)]
        # Zero-amount hold rows tie the meter to this ledger row, so reconcile sees it.
        UsageHold.objects.create(reservation=reservation, meter_id=meter_id, amount=0, policy_key=hold.key,
                                 limit_value=hold.limit)
        UsageMeter.objects.filter(pk=meter_id).update(used=F("used") + outcome.actual(hold.metric))
    log = UsageLog.objects.create(
        request_id=record["request_id"], reservation=reservation, tenant_id=record["tenant_id"],
        user_id=record["user_id"], task_id=record["task_id"], feature_code=record["feature_code"],
        provider=outcome.provider, model_name=outcome.model_name, model_class=outcome.model_class,
        tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out, api_calls=outcome.api_calls,
        cost_micro_usd=outcome.cost_micro_usd, latency_ms=outcome.latency_ms, status=outcome.status,
        error_code=outcome.error_code, enforcement_mode=record["mode"],
        would_refuse_code=record["would_refuse_code"], usage_estimated=outcome.usage_estimated,
        attempts=outcome.attempts, admitted_at=admitted_at, created_at=admitted_at,
    )
    usage_daily_add(log)
    _log_line(log, decision="replayed")
    return 1
