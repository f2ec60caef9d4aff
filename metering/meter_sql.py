"""The SQL of admission and settlement.

SQLite (the embedded default) runs them in Python: set-based meter updates, one statement for all
holds of a request; SQLite serializes writers (BEGIN IMMEDIATE), so no lock step is needed.
PostgreSQL runs each as one call of a SQL function (metering/pg_functions.py), which locks the
meters in id order itself.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from django.db import connection

from metering.models import UsageMeter

_T = UsageMeter._meta.db_table


def _run(columns: str, items: list[tuple[int, int, int]], set_clause: str, condition: str
         ) -> dict[int, tuple[int, int]]:
    if not items:
        return {}
    values = ", ".join(["(%s, %s, %s)"] * len(items))
    params = [int(value) for item in items for value in item]
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH wanted({columns}) AS (VALUES {values}) "
            f"UPDATE {_T} SET {set_clause} FROM wanted WHERE {_T}.id = wanted.id{condition} "
            f"RETURNING {_T}.id, {_T}.used, {_T}.reserved",
            params,
        )
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def holds_take(items: list[tuple[int, int, int]]) -> dict[int, tuple[int, int]]:
    """items: (meter_id, amount, limit). Adds each amount to `reserved` only where
    used + reserved + amount <= limit. Returns {meter_id: (used, reserved)} for the holds taken."""
    return _run("id, amount, lim", items, f"reserved = {_T}.reserved + wanted.amount",
                f" AND {_T}.used + {_T}.reserved + wanted.amount <= wanted.lim")


def holds_force(items: list[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """SHADOW/SOFT: take the hold whatever the limit says (the meter keeps counting)."""
    return _run("id, amount, lim", [(m, a, 0) for m, a in items], f"reserved = {_T}.reserved + wanted.amount", "")


def holds_move(items: list[tuple[int, int, int]]) -> dict[int, tuple[int, int]]:
    """items: (meter_id, release_from_reserved, add_to_used). Returns {meter_id: (used, reserved)}."""
    return _run("id, released, added", items,
                f"reserved = {_T}.reserved - wanted.released, used = {_T}.used + wanted.added", "")


# PostgreSQL: admission and settlement as one function call each (metering/pg_functions.py), one
# round trip in autocommit.

def _call_pg(sql: str, params: list) -> Any:
    """One statement on a server-side-binding cursor: the parameters travel apart from the SQL, so
    nothing quotes eight arrays into a string on every call (Django's client-side binding costs
    about 0.5 ms a call here), and psycopg prepares the statement once it has run a few times.
    Errors surface as Django's database errors, exactly as through Django's cursor."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params)
        value = cursor.fetchone()[0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def admit_pg(*, reservation: Any, alert_day: Any, holds: list) -> dict:
    """reservation: the unsaved UsageReservation to create; holds: HoldSpec list. Returns {"status":
    "admitted"|"refused"|"in_flight", "failed": [1-based indexes into holds], "alerts": [new alert ids]}."""
    r = reservation
    params = [r.pk, r.request_id, r.tenant_id, r.user_id, r.task_id, r.enforcement_mode, r.created_at, r.expires_at,
              r.idempotency_key, r.request_fingerprint, alert_day, False, [h.user_id for h in holds],
              [h.task_id for h in holds], [h.metric for h in holds], [h.window for h in holds],
              [h.period_start for h in holds], [int(h.amount) for h in holds], [int(h.limit) for h in holds],
              [h.key for h in holds]]
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
