"""Reads for callers and operators: effective limits, quota status, usage aggregates, ledger rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Q, QuerySet, Sum

from catalog.selectors import tasks_all
from metering.meter_start import meter_baseline
from metering.models import UsageDaily, UsageLog, UsageMeter
from metering.periods import period_end, period_start
from metering.policy import Limit, effective_limits
from metering.policy_keys import POLICY_KEYS, ValueType
from tenants.models import API_KEY_PREFIX
from tenants.selectors import TenantContext


def _limit_payload(limit: Limit) -> dict[str, Any]:
    key = POLICY_KEYS[limit.key]
    # Metered USD limits come back in the unit the meters count: integer micro-USD, not dollars.
    unit = "micro-USD" if key.value_type == ValueType.USD and isinstance(limit.value, int) else key.unit
    return {"key": limit.key, "value": limit.value, "unit": unit, "kind": key.kind.value,
            "applies_to_task": limit.task_code, "source": limit.source}


def limits_for_caller(*, context: TenantContext, now: datetime) -> dict[str, list[dict[str, Any]]]:
    return {task.code: [_limit_payload(x) for x in effective_limits(context=context, task_code=task.code, now=now)]
            for task in tasks_all()}


def quota_for_caller(*, context: TenantContext, now: datetime) -> list[dict[str, Any]]:
    """Every metered limit that applies to the caller, with the current period's meter."""
    tasks = {t.code: t for t in tasks_all()}
    wanted: dict[tuple, dict[str, Any]] = {}
    for task in tasks.values():
        for limit in effective_limits(context=context, task_code=task.code, now=now):
            key = POLICY_KEYS[limit.key]
            if not key.is_metered:
                continue
            user_id = context.user_id if key.subject == "user" else None
            task_id = task.id if limit.task_code else None
            start = period_start(key.window, now)
            wanted.setdefault((user_id, task_id, key.metric, key.window, start), {
                "key": limit.key, "metric": key.metric, "window": key.window,
                "task": limit.task_code, "subject": key.subject.value, "limit": int(limit.value),
                "source": limit.source, "period_start": start, "resets_at": period_end(key.window, start),
            })
    meters = {
        (m.user_id, m.task_id, m.metric, m.window, m.period_start): m
        for m in UsageMeter.objects.filter(tenant_id=context.tenant_id, api_key__isnull=True).filter(
            Q(user__isnull=True) | Q(user_id=context.user_id)
        ).filter(period_start__in={k[4] for k in wanted})
    }
    rows = []
    for subject, info in wanted.items():
        meter = meters.get(subject)
        if meter is not None:
            used, reserved = meter.used, meter.reserved
        else:  # no call since the rule appeared: the meter will start from what the ledger holds
            used, reserved = meter_baseline(tenant_id=context.tenant_id, user_id=subject[0], task_id=subject[1],
                                            metric=subject[2], window=subject[3], start=subject[4]), 0
        limit = info["limit"]
        rows.append({**info, "used": used, "reserved": reserved,
                     "remaining": max(0, limit - used - reserved),
                     "percent": round((used + reserved) * 100 / limit, 1) if limit else 100.0})
    return sorted(rows, key=lambda r: (r["task"] or "", r["key"]))


GROUPS = {"task": "task__code", "user": "user__username", "day": "day", "model": "model_name"}

# Usage reports read the per-day rollup, one row per subject and day: a range is a number of days to sum.
USAGE_EARLIEST = date(2000, 1, 1)
USAGE_MAX_DAYS = 366
USAGE_DEFAULT_DAYS = 30


class UsageRangeError(ValueError):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field  # the query parameter to blame: "from", "to" or "non_field_errors"


def usage_range(*, start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The report's inclusive day range: `end` defaults to today, `start` to 30 days before `end`.

    Raises UsageRangeError for a day before USAGE_EARLIEST or more than a year after today, a start
    after the end, or a range longer than USAGE_MAX_DAYS.
    """
    latest = today + timedelta(days=USAGE_MAX_DAYS)
    for name, day in (("from", start), ("to", end)):
        if day is not None and not USAGE_EARLIEST <= day <= latest:
            raise UsageRangeError(f"Dates lie between {USAGE_EARLIEST} and {latest}.", field=name)
    end = end or today
    start = start or max(USAGE_EARLIEST, end - timedelta(days=USAGE_DEFAULT_DAYS))
    if start > end:
        raise UsageRangeError("'from' must not be after 'to'.", field="non_field_errors")
    if (end - start).days + 1 > USAGE_MAX_DAYS:
        raise UsageRangeError(f"A usage report covers at most {USAGE_MAX_DAYS} days: narrow 'from' and 'to'.",
                              field="non_field_errors")
    return start, end


def usage_logs_visible(*, context: TenantContext) -> QuerySet[UsageLog]:
    """Tenant admins see their whole tenant, members only themselves."""
    rows = UsageLog.objects.filter(tenant_id=context.tenant_id)
    if not context.is_tenant_admin:
        rows = rows.filter(user_id=context.user_id)
    return rows


def usage_aggregate(*, context: TenantContext, start: date, end: date, group_by: str) -> list[dict[str, Any]]:
    """Sums over the per-day rollup (never a ledger scan); tenant admins see their tenant, members themselves."""
    rows = UsageDaily.objects.filter(tenant_id=context.tenant_id, day__gte=start, day__lte=end)
    if not context.is_tenant_admin:
        rows = rows.filter(user_id=context.user_id)
    field = GROUPS[group_by]
    result = (
        rows.values(field)
        .annotate(
            tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"), api_calls=Sum("api_calls"),
            tokens_cached_in=Sum("tokens_cached_in"), tokens_cache_write=Sum("tokens_cache_write"),
            cost_micro_usd=Sum("cost_micro_usd"), search_fees_micro_usd=Sum("search_fees_micro_usd"),
            requests=Sum("requests"), refused=Sum("refused"),
        )
        .order_by(field)
    )
    return [
        {group_by: r[field], "tokens_in": r["tokens_in"] or 0, "tokens_out": r["tokens_out"] or 0,
         "total_tokens": (r["tokens_in"] or 0) + (r["tokens_out"] or 0), "api_calls": r["api_calls"] or 0,
         # Of tokens_in (all prompt tokens): read from and written to the providers' prompt caches.
         "tokens_cached_in": r["tokens_cached_in"] or 0, "tokens_cache_write": r["tokens_cache_write"] or 0,
         "cost_micro_usd": r["cost_micro_usd"] or 0, "search_fees_micro_usd": r["search_fees_micro_usd"] or 0,
         "requests": r["requests"] or 0, "refused": r["refused"] or 0}
        for r in result
    ]


def usage_logs_page(*, context: TenantContext) -> QuerySet[UsageLog]:
    return usage_logs_visible(context=context).select_related("task", "user").order_by("-admitted_at", "-id")




# --- ledger rows for tenant admins: filters and the CSV export ---------------------------------------

USAGE_LOG_STATUSES = tuple(UsageLog.Status.values)


def usage_logs_filtered(*, context: TenantContext, start: date | None = None, end: date | None = None,
                        user: str = "", task: str = "", status: str = "", model: str = "",
                        api_key: str = "") -> QuerySet[UsageLog]:
    """The caller's visible ledger rows (admins: the tenant, members: their own) narrowed by the filters.

    Days are UTC and inclusive; a range is read through the (tenant, admitted_at) index. An API key is
    named by its id or its public prefix (gw_live_...); a key of another tenant matches nothing here."""
    rows = usage_logs_visible(context=context)
    if start is not None:
        rows = rows.filter(admitted_at__gte=datetime.combine(start, time.min, UTC))
    if end is not None:
        rows = rows.filter(admitted_at__lt=datetime.combine(end + timedelta(days=1), time.min, UTC))
    if user:
        rows = rows.filter(user__username=user)
    if task:
        rows = rows.filter(task__code=task)
    if status:
        rows = rows.filter(status=status)
    if model:
        rows = rows.filter(model_name=model)
    if api_key:
        if api_key.isdigit():
            rows = rows.filter(api_key_id=int(api_key))
        else:
            rows = rows.filter(api_key__public_id=api_key.removeprefix(API_KEY_PREFIX))
    return rows


EXPORT_COLUMNS = ("request_id", "admitted_at", "user", "task", "feature_code", "provider", "model_name",
                  "model_class", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd", "latency_ms", "status",
                  "error_code", "enforcement_mode", "would_refuse_code", "usage_estimated", "settled_late",
                  "max_tokens_fitted")


def usage_logs_export_columns() -> list[str]:
    columns = list(EXPORT_COLUMNS)
    names = {f.name for f in UsageLog._meta.get_fields()}
    extra = [c for c in ("tokens_cached_in", "tokens_cache_write") if c in names]
    at = columns.index("tokens_out") + 1
    columns[at:at] = extra
    columns.insert(columns.index("user") + 1, "api_key")
    return [*columns, "cost_usd", "failed_attempts"]


def usage_logs_export_rows(rows: QuerySet[UsageLog], *, chunk_size: int = 2000) -> Iterator[list[Any]]:
    """One list per ledger row, oldest first, read in chunks (the export streams; nothing is held whole)."""
    columns = usage_logs_export_columns()
    fields = {"user": "user__username", "task": "task__code", "api_key": "api_key__public_id"}
    wanted = [fields.get(c, c) for c in columns if c not in ("cost_usd", "failed_attempts")] + ["attempts"]
    for values in rows.order_by("admitted_at", "id").values_list(*wanted).iterator(chunk_size=chunk_size):
        record = dict(zip(wanted, values, strict=True))
        out = []
        for column in columns:
            if column == "cost_usd":
                out.append(f"{record['cost_micro_usd'] / 1_000_000:.6f}")
            elif column == "failed_attempts":
                out.append(len(record["attempts"] or []))
            elif column == "admitted_at":
                out.append(record["admitted_at"].astimezone(UTC).isoformat())
            else:
                value = record[fields.get(column, column)]
                out.append("" if value is None else value)
        yield out
