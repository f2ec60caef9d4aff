"""Set-based meter updates: one statement for all holds of a request instead of one per meter.

On PostgreSQL the rows are first locked in meter-id order (a fixed order: no deadlocks between
requests that share meters), then updated by a statement whose snapshot already sees the latest
committed counters. SQLite serializes writers (BEGIN IMMEDIATE),
so it needs no lock step. Both return the rows they changed, with their new values.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

from metering.models import UsageMeter

_T = UsageMeter._meta.db_table


def _run(columns: str, items: list[tuple[int, int, int]], set_clause: str, condition: str) -> dict[int, tuple]:
    if not items:
        return {}
    values = ", ".join(["(%s, %s, %s)"] * len(items))
    params = [int(value) for item in items for value in item]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Lock first, in its own statement: the UPDATE below then starts with a snapshot taken
            # after every lock is held, so it sees the latest committed counters. (Locking inside
            # the same statement would leave the UPDATE on an older snapshot, and PostgreSQL's
            # re-check of a concurrently updated row can drop it: a false "limit reached".)
            cursor.execute(f"SELECT id FROM {_T} WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                           [[int(item[0]) for item in items]])
        cursor.execute(
            f"WITH wanted({columns}) AS (VALUES {values}) "
            f"UPDATE {_T} SET {set_clause} FROM wanted WHERE {_T}.id = wanted.id{condition} "
            f"RETURNING {_T}.id, {_T}.used, {_T}.reserved, {_T}.tenant_id, {_T}.user_id, {_T}.task_id, "
            f"{_T}.metric, {_T}.window, {_T}.period_start",
            params,
        )
        return {row[0]: (row[1], row[2], subject_key(*row[3:])) for row in cursor.fetchall()}


def subject_key(tenant_id, user_id, task_id, metric, window, period_start) -> tuple:
    """A meter's identity, comparable whatever the driver returns for the timestamp."""
    stamp = period_start if isinstance(period_start, str) else period_start.strftime("%Y-%m-%d %H:%M:%S")
    return (int(tenant_id), user_id, task_id, metric, window, stamp.replace("T", " ")[:19])


def holds_take(items: list[tuple[int, int, int]]) -> dict[int, tuple]:
    """items: (meter_id, amount, limit). Adds each amount to `reserved` only where
    used + reserved + amount <= limit. Returns {meter_id: (used, reserved, subject)} for the holds taken."""
    return _run("id, amount, lim", items, f"reserved = {_T}.reserved + wanted.amount",
                f" AND {_T}.used + {_T}.reserved + wanted.amount <= wanted.lim")


def holds_force(items: list[tuple[int, int]]) -> dict[int, tuple]:
    """SHADOW/SOFT: take the hold whatever the limit says (the meter keeps counting)."""
    return _run("id, amount, lim", [(m, a, 0) for m, a in items], f"reserved = {_T}.reserved + wanted.amount", "")


def holds_move(items: list[tuple[int, int, int]]) -> dict[int, tuple]:
    """items: (meter_id, release_from_reserved, add_to_used). Returns {meter_id: (used, reserved, subject)}."""
    return _run("id, released, added", items,
                f"reserved = {_T}.reserved - wanted.released, used = {_T}.used + wanted.added", "")


# PostgreSQL: admission and settlement as one function call each (metering/pg_functions.py), one
# round trip in autocommit.

def _call_pg(sql: str, params: list) -> Any:
    """One statement on a server-side-binding cursor: the parameters travel apart from the SQL, so
    nothing quotes eight arrays into a string on every call (Django's client-side binding costs
    about 0.5 ms a call here), and psycopg prepares the statement once it has run a few times.
    Errors surface as Django's database errors, exactly as through Django's cursor."""
    import psycopg

    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params)
        value = cursor.fetchone()[0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def admit_pg(*, reservation_id, request_id: str, tenant_id: int, user_id: int, task_id: int, mode: str, now,
             expires_at, idempotency_key: str | None, fingerprint: str, alert_day, holds: list) -> dict:
    """holds: HoldSpec list. Returns {"status": "admitted"|"refused"|"in_flight", "failed": [1-based
    indexes into holds], "alerts": [new QuotaAlert ids]}."""
    params = [reservation_id, request_id, tenant_id, user_id, task_id, mode, now, expires_at, idempotency_key,
              fingerprint, alert_day, False, [h.user_id for h in holds], [h.task_id for h in holds],
              [h.metric for h in holds], [h.window for h in holds], [h.period_start for h in holds],
              [int(h.amount) for h in holds], [int(h.limit) for h in holds], [h.key for h in holds]]
    for ensure_meters in (False, True):
        params[11] = ensure_meters
        result = _call_pg(
            "SELECT gateway_admit(%s::uuid, %s::text, %s::bigint, %s::bigint, %s::bigint, %s::text, %s::timestamptz, "
            "%s::timestamptz, %s::text, %s::text, %s::timestamptz, %s::boolean, %s::bigint[], %s::bigint[], "
            "%s::text[], %s::text[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::text[])",
            params,
        )
        if result["status"] != "missing_meters":
            return result
    raise RuntimeError("gateway_admit found meters missing right after creating them")


def settle_pg(*, reservation_id, reservation_status: str, now, free_key: bool, outcome, quota_keys: list[str]
              ) -> dict | None:
    """Returns None when the reservation was not ACTIVE (already settled, released or expired)."""
    body = None if outcome.response_body is None else json.dumps(outcome.response_body)
    return _call_pg(
        "SELECT gateway_settle(%s::uuid, %s::text, %s::timestamptz, %s::boolean, %s::int, %s::jsonb, %s::text, "
        "%s::text, %s::text, %s::text, %s::bigint, %s::bigint, %s::bigint, %s::bigint, %s::int, %s::text, %s::text, "
        "%s::boolean, %s::jsonb, %s::text[])",
        [reservation_id, reservation_status, now, free_key, outcome.response_status, body, outcome.status,
         outcome.provider, outcome.model_name, outcome.model_class, outcome.tokens_in, outcome.tokens_out,
         outcome.api_calls, outcome.cost_micro_usd, outcome.latency_ms, outcome.error_code,
         outcome.would_refuse_code, outcome.usage_estimated, json.dumps(outcome.attempts), quota_keys],
    )
