"""Durable usage spool for SHADOW/SOFT when the metering database is unreachable.

Where a record goes (one per call, keyed by its request_id):
- Redis (`METERING_SPOOL_REDIS_URL`, default `REDIS_URL`): one HSET into one hash that every gateway
  process on every host shares. A single command, so a crash never leaves half a record; as durable as
  Redis is (production runs it with AOF).
- A JSON file in `METERING_SPOOL_DIR` when there is no Redis (the embedded default: one host, so that
  directory is the shared store) or when Redis is unreachable too. The file is written to a temporary
  name, fsynced, renamed and its directory fsynced. Such a host's files move to Redis at its next spool
  write that reaches Redis, and any replay on that host records them.

`spool_replay` records each record in its own transaction (ledger row + meters) and removes it from its
store only after that commit. The ledger's unique request_id makes a record that is already recorded a
no-op, so a crash between commit and removal, or two replayers on one record, still records it once. A
claim in Redis (SET NX with an expiry) keeps concurrent replayers off each other's records; a crashed
replayer's claim expires after `METERING_SPOOL_CLAIM_SECONDS`, so no record is stranded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from metering.models import UsageHold, UsageLog, UsageMeter, UsageReservation
from metering.policy import HoldSpec
from metering.services import CallOutcome, _log_line, meters_ensure, usage_daily_add, usage_settle

logger = logging.getLogger("gateway.metering.spool")

# spool_write runs on the request path while the database is down: a Redis that is down too must
# send the record to disk quickly, not after redis-py's default ten retries.
_REDIS_TIMEOUT_SECONDS = 2.0
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()
# Deletes a claim only if it is still ours: one that expired and was taken by another replayer stays.
_RELEASE_CLAIM = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _redis() -> redis.Redis | None:
    url = settings.METERING_SPOOL_REDIS_URL
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url) or redis.Redis.from_url(
                url, socket_timeout=_REDIS_TIMEOUT_SECONDS, socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 1),
            )
            _clients[url] = client
    return client


def _dir() -> Path:
    path = Path(settings.METERING_SPOOL_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def spool_write(
    *, request_id: str, tenant_id: int, user_id: int, task_id: int, feature_code: str, mode: str,
    admitted_at: datetime, holds: list[HoldSpec], outcome: CallOutcome, would_refuse_code: str = "",
    api_key_id: int | None = None,
) -> Path | None:
    """Keep a call's usage for `spool_replay`. Returns the file written, or None if it went to Redis."""
    record = {
        "request_id": request_id, "tenant_id": tenant_id, "user_id": user_id, "task_id": task_id,
        "feature_code": feature_code, "mode": mode, "admitted_at": admitted_at.isoformat(),
        "would_refuse_code": would_refuse_code, "api_key_id": api_key_id,
        "holds": [{**asdict(h), "period_start": h.period_start.isoformat()} for h in holds],
        "outcome": {k: v for k, v in asdict(outcome).items() if k not in ("response_body",)},
    }
    data = json.dumps(record)
    client = _redis()
    if client is not None:
        try:
            client.hset(settings.METERING_SPOOL_REDIS_KEY, request_id, data)
        except RedisError:
            logger.error("metering database and spool Redis unavailable: usage of %s spooled to this host's disk",
                         request_id)
        else:
            logger.warning("metering database unavailable: usage of %s spooled to Redis", request_id)
            _files_to_redis(client)
            return None
    path = _file_write(request_id, data)
    logger.warning("metering database unavailable: usage of %s spooled to disk", request_id)
    return path


def _file_write(request_id: str, data: str) -> Path:
    directory = _dir()
    final = directory / f"{request_id}.json"
    temporary = directory / f".{request_id}.tmp"
    with open(temporary, "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    # The rename itself must survive a power cut, not only the file's bytes.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return final


def _files_to_redis(client: redis.Redis) -> None:
    """Move the records this host wrote to disk while Redis was down into the shared hash, so any
    host's replay records them (and a replaced host loses none). Best effort: the call is not failed."""
    try:
        for path in _dir().glob("*.json"):
            # HSET before unlink: a crash between the two leaves the record in both stores, recorded once.
            client.hset(settings.METERING_SPOOL_REDIS_KEY, path.stem, path.read_text())
            path.unlink(missing_ok=True)
    except (RedisError, OSError):
        logger.warning("could not move this host's spooled usage to Redis; it stays on disk", exc_info=True)


def spool_pending() -> int:
    """Records not yet recorded: the shared Redis hash plus this host's files."""
    pending = sum(1 for _ in _dir().glob("*.json"))
    client = _redis()
    if client is not None:
        try:
            pending += client.hlen(settings.METERING_SPOOL_REDIS_KEY)
        except RedisError:
            logger.warning("spool Redis unavailable: counting this host's spooled files only")
    return pending


def spool_replay() -> int:
    """Record every spooled call (Redis, then this host's files). Returns how many were recorded now."""
    recorded = 0
    client = _redis()
    if client is not None:
        try:
            recorded += _replay_redis(client)
        except RedisError:
            logger.warning("spool Redis unavailable: replaying this host's spooled files only", exc_info=True)
    for path in sorted(_dir().glob("*.json")):
        try:
            raw = path.read_text()
        except FileNotFoundError:
            continue  # another replayer on this host recorded and removed it
        recorded += _replay_and_remove(raw, remove=lambda p=path: p.unlink(missing_ok=True))
    return recorded


def _replay_redis(client: redis.Redis) -> int:
    key = settings.METERING_SPOOL_REDIS_KEY
    release = client.register_script(_RELEASE_CLAIM)
    recorded = 0
    for field, raw in client.hscan_iter(key, count=100):
        request_id = field.decode()
        claim, token = f"{key}:claim:{request_id}", uuid.uuid4().hex
        if not client.set(claim, token, nx=True, ex=settings.METERING_SPOOL_CLAIM_SECONDS):
            continue  # another replayer has it (or had it, and crashed: its claim expires)
        try:
            recorded += _replay_and_remove(raw.decode(), remove=lambda f=field: client.hdel(key, f))
        finally:
            release(keys=[claim], args=[token])
    return recorded


def _replay_and_remove(raw: str, *, remove: Callable[[], Any]) -> int:
    """Record one spooled call, then remove it from its store, only once its ledger row is committed."""
    record = json.loads(raw)
    try:
        recorded = _replay_one(record)
    except IntegrityError:
        if not UsageLog.objects.filter(request_id=record["request_id"]).exists():
            # Not a duplicate (say, its tenant was deleted): keep the usage and say so, every replay.
            logger.exception("spooled usage of %s cannot be recorded; it stays in the spool", record["request_id"])
            return 0
        recorded = 0  # a concurrent replayer committed it first
    remove()
    return recorded
@transaction.atomic
def _replay_one(record: dict) -> int:
    admitted_at = datetime.fromisoformat(record["admitted_at"])
    outcome = CallOutcome(**record["outcome"])
    if UsageLog.objects.filter(request_id=record["request_id"]).exists():
        return 0  # recorded already (a replay that crashed before deleting the file, or a settled call)
    admitted = UsageReservation.objects.filter(request_id=record["request_id"]).values_list("pk", flat=True).first()
    if admitted is not None:
        # Admitted while the database was up, spooled because settlement failed: settle the
        # reservation (its holds become the actual usage). An outage longer than the lease finds it
        # expired, holds released: settled late, it is still charged what the call used.
        return 1 if usage_settle(reservation_id=admitted, outcome=outcome) is not None else 0
    holds = [HoldSpec(**{**h, "period_start": datetime.fromisoformat(h["period_start"])}) for h in record["holds"]]
    reservation = UsageReservation.objects.create(
        request_id=record["request_id"], tenant_id=record["tenant_id"], user_id=record["user_id"],
        task_id=record["task_id"], status=UsageReservation.Status.COMPLETED, enforcement_mode=record["mode"],
        created_at=admitted_at, expires_at=admitted_at, settled_at=admitted_at, api_key_id=record.get("api_key_id"),
    )
    meter_ids = meters_ensure(tenant_id=record["tenant_id"], holds=holds)
    def meter_of(hold: HoldSpec) -> int:
        return meter_ids[(record["tenant_id"], hold.user_id, hold.task_id, hold.metric, hold.window,
                          hold.period_start, hold.api_key_id)]

    # In meter-id order, as admission locks them: a replay racing admissions never deadlocks.
    for hold in sorted(holds, key=meter_of):
        meter_id = meter_of(hold)
        # Zero-amount hold rows tie the meter to this ledger row, so reconcile sees it.
        UsageHold.objects.create(reservation=reservation, meter_id=meter_id, amount=0, policy_key=hold.key,
                                 limit_value=hold.limit)
        UsageMeter.objects.filter(pk=meter_id).update(used=F("used") + outcome.actual(hold.metric))
    log = UsageLog.objects.create(
        request_id=record["request_id"], reservation=reservation, tenant_id=record["tenant_id"],
        user_id=record["user_id"], task_id=record["task_id"], feature_code=record["feature_code"],
        api_key_id=record.get("api_key_id"),
        provider=outcome.provider, model_name=outcome.model_name, model_class=outcome.model_class,
        tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out, api_calls=outcome.api_calls,
        tokens_cached_in=outcome.tokens_cached_in, tokens_cache_write=outcome.tokens_cache_write,
        cost_micro_usd=outcome.cost_micro_usd, search_fees_micro_usd=outcome.search_fees_micro_usd,
        latency_ms=outcome.latency_ms, status=outcome.status,
        error_code=outcome.error_code, enforcement_mode=record["mode"],
        would_refuse_code=record["would_refuse_code"], would_refuse=outcome.would_refuse,
        usage_estimated=outcome.usage_estimated,
        attempts=outcome.attempts, max_tokens_fitted=outcome.max_tokens_fitted, admitted_at=admitted_at,
        created_at=admitted_at,
    )
    usage_daily_add(log)
    _log_line(log, decision="replayed")
    return 1
