"""The SQL of admission and settlement.

SQLite (the embedded default) runs them in Python: set-based meter updates, one statement for all
holds of a request; SQLite serializes writers (BEGIN IMMEDIATE), so no lock step is needed.
PostgreSQL runs each as one call of a SQL function (metering/pg_functions.py), which locks the
meters in id order itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg
from django.core.serializers.json import DjangoJSONEncoder
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


def meters_lock(meter_ids: list[int]) -> None:
    """PostgreSQL: lock the meters in id order before a multi-row UPDATE (whose own row order is not
    defined), so two requests sharing meters never deadlock. SQLite serializes writers already."""
    if not meter_ids or connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {_T} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
                       [sorted(set(meter_ids))])


def meters_usage(meter_ids: list[int]) -> dict[int, tuple[int, int]]:
    """{meter_id: (used, reserved)} as the current transaction sees them."""
    return {m: (u, r) for m, u, r in UsageMeter.objects.filter(pk__in=meter_ids).values_list("id", "used", "reserved")}


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
    """One statement on a server-side-binding cursor, prepared on each connection the first time it
    runs there (settings: `prepare_threshold`); parsing and planning the call again each time cost
    about 0.2 ms. Our pool is in-process, so a connection keeps its prepared statements.

    The hot-path functions take one JSON parameter: psycopg's adaptation of a dozen typed
    parameters and eight arrays cost about 0.4 ms a call here, json.dumps a few microseconds.
    Errors surface as Django's database errors, exactly as through Django's cursor."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        value = cursor.fetchone()[0]
    # Django registers a jsonb loader that returns the text (its JSONField parses it itself).
    return None if value is None else json.loads(value)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _pg_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal: every element quoted (so any text is safe), None as NULL."""
    return "{" + ",".join(
        "NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
    ) + "}"


def admit_pg(*, reservation: Any, alert_day: Any, holds: list) -> dict:
    """reservation: the unsaved UsageReservation to create; holds: HoldSpec list. Returns {"status":
    "admitted"|"refused"|"in_flight", "failed": [1-based indexes into holds], "failed_usage": [[used,
    reserved] of each failed hold's meter], "alerts": [new alert ids]}."""
    r = reservation
    payload = {
        "reservation": str(r.pk), "request_id": r.request_id, "tenant": r.tenant_id, "user": r.user_id,
        "task": r.task_id, "mode": r.enforcement_mode, "now": _iso(r.created_at), "expires": _iso(r.expires_at),
        "idempotency_key": r.idempotency_key, "fingerprint": r.request_fingerprint, "alert_day": _iso(alert_day),
        "ensure_meters": False,
        "h_user": _pg_array(h.user_id for h in holds), "h_task": _pg_array(h.task_id for h in holds),
        "h_apikey": _pg_array(h.api_key_id for h in holds), "api_key": r.api_key_id,
        "h_metric": _pg_array(h.metric for h in holds), "h_window": _pg_array(h.window for h in holds),
        "h_period": _pg_array(_iso(h.period_start) for h in holds),
        "h_amount": _pg_array(int(h.amount) for h in holds), "h_limit": _pg_array(int(h.limit) for h in holds),
        "h_key": _pg_array(h.key for h in holds),
    }
    for ensure_meters in (False, True):
        payload["ensure_meters"] = ensure_meters
        result = _call_pg("SELECT gateway_admit(%s::jsonb)", [json.dumps(payload)])
        if result["status"] != "missing_meters":
            return result
    raise RuntimeError("gateway_admit found meters missing right after creating them")


def settle_pg(*, reservation_id, now, free_key: bool, outcome) -> dict | None:
    """Returns None when the reservation was settled already."""
    payload = {
        "reservation": str(reservation_id), "now": _iso(now),
        "free_key": free_key, "response_status": outcome.response_status, "response_body": outcome.response_body,
        "status": outcome.status, "provider": outcome.provider, "model_name": outcome.model_name,
        "model_class": outcome.model_class, "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out,
        "tokens_cached_in": outcome.tokens_cached_in, "tokens_cache_write": outcome.tokens_cache_write,
        "search_fees": outcome.search_fees_micro_usd,
        "api_calls": outcome.api_calls, "cost": outcome.cost_micro_usd, "latency_ms": outcome.latency_ms,
        "error_code": outcome.error_code, "would_refuse": outcome.would_refuse_code, "reasons": outcome.would_refuse,
        "estimated": outcome.usage_estimated, "attempts": outcome.attempts,
        "max_tokens_fitted": outcome.max_tokens_fitted,
    }
    return _call_pg("SELECT gateway_settle(%s::jsonb)", [json.dumps(payload, cls=DjangoJSONEncoder)])
