"""Console reads. Usage comes from the per-day rollup (`metering.UsageDaily`, indexed by day and by
tenant + day) and from indexed lookups; the ledger (`UsageLog`) only through bounded, indexed time
ranges of the last hours (hourly charts, provider health), never a scan."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncHour

from adminconsole.models import QuotaRequest
from catalog.models import Plan
from catalog.selectors import tasks_all
from metering.models import (
    Notification,
    PolicyRule,
    QuotaAlert,
    UsageDaily,
    UsageLog,
    UsageMeter,
    UsageReservation,
)
from metering.periods import period_start
from metering.policy import effective_limits
from metering.policy_keys import POLICY_KEYS, Subject, ValueType
from metering.selectors import quota_for_caller
from tenants.audit import AuditEvent
from tenants.models import Tenant, User
from tenants.selectors import TenantContext

SUMS = ("requests", "refused", "tokens_in", "tokens_out", "tokens_cached_in", "tokens_cache_write", "api_calls",
        "cost_micro_usd")


def _sums() -> dict[str, Sum]:
    return {name: Sum(name) for name in SUMS}


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    for name in SUMS:
        row[name] = row.get(name) or 0
    row["total_tokens"] = row["tokens_in"] + row["tokens_out"]
    return row


def day_range(end: date, days: int) -> list[date]:
    return [end - timedelta(days=days - 1 - i) for i in range(days)]


def task_codes() -> dict[int, str]:
    return {t.id: t.code for t in tasks_all()}


def daily_by(*, start: date, end: date, field: str, tenant_id: int | None = None) -> dict[tuple[date, Any], dict]:
    """Sums per (day, field) over the rollup for a day range (optionally one tenant)."""
    rows = UsageDaily.objects.filter(day__gte=start, day__lte=end)
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    return {(r["day"], r[field]): _clean(r) for r in rows.values("day", field).annotate(**_sums()).order_by()}


def series_by(days: list[date], cells: dict[tuple[date, Any], dict], metric: str,
              names: dict[Any, str]) -> list[tuple[str, list[float]]]:
    keys = sorted({k for _, k in cells}, key=lambda k: names.get(k, str(k)))
    return [(names.get(k, str(k)), [cells.get((d, k), {}).get(metric, 0) for d in days]) for k in keys]


def totals_by_day(days: list[date], cells: dict[tuple[date, Any], dict], metric: str) -> list[float]:
    per_day: dict[date, float] = defaultdict(float)
    for (day, _), row in cells.items():
        per_day[day] += row[metric]
    return [per_day.get(d, 0) for d in days]


# ------------------------------------------------------------------------------------------ overview


def overview(*, today: date, days: int = 30) -> dict[str, Any]:
    span = day_range(today, days)
    by_task = daily_by(start=span[0], end=today, field="task_id")
    top = list(
        UsageDaily.objects.filter(day__gte=span[0], day__lte=today).values("tenant_id").annotate(**_sums())
        .order_by("-cost_micro_usd", "tenant_id")[:10]
    )
    slugs = dict(Tenant.objects.filter(pk__in=[r["tenant_id"] for r in top]).values_list("pk", "slug"))
    top_tenants = [{**_clean(r), "slug": slugs.get(r["tenant_id"], r["tenant_id"])} for r in top]
    totals = {name: sum(r[name] for r in by_task.values()) for name in SUMS}
    totals["total_tokens"] = totals["tokens_in"] + totals["tokens_out"]
    task_totals: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SUMS, 0))
    for (_, task_id), row in by_task.items():
        for name in SUMS:
            task_totals[task_id][name] += row[name]
    codes = task_codes()
    return {
        "days": span,
        "by_task": by_task,
        "task_names": codes,
        "task_totals": sorted(({"task": codes.get(k, k), **v, "total_tokens": v["tokens_in"] + v["tokens_out"]}
                               for k, v in task_totals.items()), key=lambda r: str(r["task"])),
        "totals": totals,
        "top_tenants": top_tenants,
    }


def reservations_live(*, now: datetime) -> dict[str, int]:
    active = UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE)
    return {"active": active.count(), "stuck": active.filter(expires_at__lte=now).count()}


def alerts_recent(*, tenant_id: int | None = None, limit: int = 15) -> QuerySet[QuotaAlert]:
    rows = QuotaAlert.objects.select_related("tenant", "meter__task")
    if tenant_id is not None:
        return rows.filter(tenant_id=tenant_id).order_by("-created_at")[:limit]
    return rows.order_by("-id")[:limit]  # the primary key orders inserts; no scan of the alert table


def quota_requests_pending_count() -> int:
    return QuotaRequest.objects.filter(status=QuotaRequest.Status.PENDING).count()


# -------------------------------------------------------------------------------------------- tenants


def tenants_page_rows(*, query: str = "") -> QuerySet[Tenant]:
    rows = Tenant.objects.select_related("signup_ati_token").order_by("name", "pk")
    if query:
        rows = rows.filter(Q(slug__icontains=query) | Q(name__icontains=query))
    return rows


def usage_totals_for_tenants(*, tenant_ids: list[int], start: date, end: date) -> dict[int, dict]:
    rows = (UsageDaily.objects.filter(tenant_id__in=tenant_ids, day__gte=start, day__lte=end)
            .values("tenant_id").annotate(**_sums()).order_by())
    return {r["tenant_id"]: _clean(r) for r in rows}


def tenant_context_for(*, tenant: Tenant, user: User | None) -> TenantContext | None:
    """The context the policy would see for this user (display only: no status or expiry checks)."""
    if user is None:
        return None
    token = tenant.signup_ati_token
    plan = Plan.objects.filter(code=token.plan_tier).first()
    if plan is None:
        return None
    return TenantContext(user=user, tenant_id=tenant.pk, tenant_slug=tenant.slug, tenant_name=tenant.name,
                         ati_id=token.pk, ati_expires_at=token.expires_at, plan_code=plan.code, plan_id=plan.pk,
                         role=user.role, enforcement_mode=tenant.enforcement_mode)


def first_admin(tenant: Tenant) -> User | None:
    users = User.objects.filter(tenant=tenant).order_by("-is_active", "id")
    return users.filter(role=User.Role.ADMIN).first() or users.first()


def _format_limit(key: str, value: Any, unit: str) -> str:
    if isinstance(value, list):
        return ", ".join(value)
    if unit == "micro-USD":
        return f"${int(value) / 1_000_000:,.2f}"
    if POLICY_KEYS[key].value_type == ValueType.USD:
        return f"${value}"
    return f"{value:,}" if isinstance(value, int) else str(value)


@dataclass
class QuotaBar:
    label: str
    key: str
    task: str | None
    window: str
    used: int
    reserved: int
    limit: int
    source: str
    is_cost: bool

    @property
    def used_pct(self) -> float:
        return min(100.0, self.used * 100 / self.limit) if self.limit else (100.0 if self.used else 0.0)

    @property
    def reserved_pct(self) -> float:
        return min(100.0 - self.used_pct, self.reserved * 100 / self.limit) if self.limit else 0.0

    @property
    def percent(self) -> float:
        return round((self.used + self.reserved) * 100 / self.limit, 1) if self.limit else 100.0

    @property
    def level(self) -> str:
        return "over" if self.percent >= 100 else "warn" if self.percent >= 80 else "ok"

    def fmt(self, value: int) -> str:
        return f"${value / 1_000_000:,.2f}" if self.is_cost else f"{value:,}"

    @property
    def text(self) -> str:
        return f"{self.fmt(self.used)} used + {self.fmt(self.reserved)} reserved of {self.fmt(self.limit)}"


def _bars(rows: list[dict[str, Any]], label: str) -> list[QuotaBar]:
    return [QuotaBar(label=label, key=r["key"], task=r["task"], window=r["window"], used=r["used"],
                     reserved=r["reserved"], limit=r["limit"], source=r["source"], is_cost=r["metric"] == "COST")
            for r in rows]


USER_BARS_MAX = 25


def quota_bars(*, tenant: Tenant, admin: User | None, now: datetime) -> tuple[list[QuotaBar], list[QuotaBar]]:
    """(tenant meters, per-user meters) for the current periods, each with its own effective limit."""
    context = tenant_context_for(tenant=tenant, user=admin)
    if context is None:
        return [], []
    tenant_bars = _bars([r for r in quota_for_caller(context=context, now=now) if r["subject"] == Subject.TENANT],
                        "tenant")
    user_keys = [k for k in POLICY_KEYS.values() if k.is_metered and k.subject == Subject.USER]
    periods = {period_start(k.window, now) for k in user_keys}
    user_ids = list(
        UsageMeter.objects.filter(tenant=tenant, user__isnull=False, period_start__in=periods)
        .filter(Q(used__gt=0) | Q(reserved__gt=0)).values_list("user_id", flat=True).distinct()
        .order_by("user_id")[:USER_BARS_MAX]
    )
    user_bars: list[QuotaBar] = []
    for user in User.objects.filter(pk__in=user_ids).order_by("username"):
        user_context = tenant_context_for(tenant=tenant, user=user)
        rows = [r for r in quota_for_caller(context=user_context, now=now) if r["subject"] == Subject.USER]
        user_bars.extend(_bars(rows, user.username))
    return tenant_bars, user_bars


def limits_table(*, tenant: Tenant, admin: User | None, now: datetime) -> list[dict[str, Any]]:
    context = tenant_context_for(tenant=tenant, user=admin)
    if context is None:
        return []
    rows = []
    for task in tasks_all():
        for limit in effective_limits(context=context, task_code=task.code, now=now):
            key = POLICY_KEYS[limit.key]
            unit = "micro-USD" if key.value_type == ValueType.USD and isinstance(limit.value, int) else key.unit
            rows.append({"task": task.code, "key": limit.key, "value": _format_limit(limit.key, limit.value, unit),
                         "kind": key.kind.value, "scope": limit.task_code or "all tasks", "source": limit.source})
    return rows


def tenant_detail(*, tenant: Tenant, today: date, now: datetime, days: int = 30) -> dict[str, Any]:
    span = day_range(today, days)
    admin = first_admin(tenant)
    by_task = daily_by(start=span[0], end=today, field="task_id", tenant_id=tenant.pk)
    by_user = daily_by(start=span[0], end=today, field="user_id", tenant_id=tenant.pk)
    user_totals: dict[Any, int] = defaultdict(int)
    for (_, user_id), row in by_user.items():
        user_totals[user_id] += row["total_tokens"]
    top_users = sorted(user_totals, key=lambda u: -user_totals[u])[:6]
    names = dict(User.objects.filter(pk__in=[u for u in user_totals if u]).values_list("pk", "username"))
    user_rows = []
    for user_id in sorted(user_totals, key=lambda u: -user_totals[u]):
        cells = [row for (_, uid), row in by_user.items() if uid == user_id]
        user_rows.append({"user": names.get(user_id, "(deleted user)"),
                          **{name: sum(c[name] for c in cells) for name in (*SUMS, "total_tokens")}})
    tenant_bars, user_bars = quota_bars(tenant=tenant, admin=admin, now=now)
    return {
        "days": span,
        "admin": admin,
        "by_task": by_task,
        "by_user": {k: v for k, v in by_user.items() if k[1] in top_users},
        "user_names": {**{u: names.get(u, "(deleted user)") for u in top_users}},
        "user_rows": user_rows,
        "task_names": task_codes(),
        "tenant_bars": tenant_bars,
        "user_bars": user_bars,
        "limits": limits_table(tenant=tenant, admin=admin, now=now),
        "reservations": UsageReservation.objects.filter(tenant=tenant, status=UsageReservation.Status.ACTIVE)
        .select_related("user", "task").order_by("-created_at")[:50],
        "alerts": alerts_recent(tenant_id=tenant.pk, limit=20),
        "notifications": Notification.objects.filter(tenant=tenant).select_related("user")
        .order_by("-created_at")[:20],
        "user_count": User.objects.filter(tenant=tenant).count(),
        "quota_requests": QuotaRequest.objects.filter(tenant=tenant).select_related("task", "requested_by")
        .order_by("-created_at", "-id")[:10],
        "quota_requests_pending": QuotaRequest.objects.filter(tenant=tenant, status=QuotaRequest.Status.PENDING)
        .select_related("task", "requested_by").order_by("created_at", "id")[:20],
    }


# ------------------------------------------------------------------------------------------ plan matrix


def plan_matrix() -> dict[str, Any]:
    from catalog.models import Feature, ModelClass, PlanFeature, PlanLLMAccess, Task

    plans = list(Plan.objects.order_by("code"))
    features = list(Feature.objects.order_by("code"))
    tasks = list(Task.objects.select_related("feature").order_by("code"))
    classes = list(ModelClass.objects.order_by("rank"))
    has_feature = set(PlanFeature.objects.values_list("plan_id", "feature_id"))
    grants: set[tuple[int, int, int]] = set()
    for access in PlanLLMAccess.objects.prefetch_related("model_classes"):
        grants.update((access.plan_id, access.task_id, mc.pk) for mc in access.model_classes.all())
    rules: dict[int, list[PolicyRule]] = defaultdict(list)
    for rule in PolicyRule.objects.filter(scope=PolicyRule.Scope.PLAN).select_related("task").order_by("key",
                                                                                                       "task__code"):
        rules[rule.plan_id].append(rule)
    tenant_counts = dict(
        Tenant.objects.values("signup_ati_token__plan_tier").annotate(n=Count("pk"))
        .values_list("signup_ati_token__plan_tier", "n")
    )
    return {
        "plans": [
            {
                "plan": plan,
                "tenants": tenant_counts.get(plan.code, 0),
                "features": [{"feature": f, "on": (plan.pk, f.pk) in has_feature} for f in features],
                "tasks": [{"task": t, "classes": [{"cls": c, "on": (plan.pk, t.pk, c.pk) in grants}
                                                  for c in classes]} for t in tasks],
                "rules": rules.get(plan.pk, []),
            }
            for plan in plans
        ],
        "features": features,
        "tasks": tasks,
        "classes": classes,
    }


# -------------------------------------------------------------------------------------------- audit


def audit_events(*, source: str = "", action: str = "", tenant_slug: str = "", start: date | None = None,
                 end: date | None = None) -> QuerySet[AuditEvent]:
    from datetime import UTC, time

    rows = AuditEvent.objects.select_related("tenant", "actor")
    if source:
        rows = rows.filter(source=source)
    if action:
        rows = rows.filter(action=action)
    if tenant_slug:
        rows = rows.filter(tenant__slug=tenant_slug)
    if start:
        rows = rows.filter(created_at__gte=datetime.combine(start, time.min, UTC))
    if end:
        rows = rows.filter(created_at__lt=datetime.combine(end + timedelta(days=1), time.min, UTC))
    return rows.order_by("-created_at", "-id")


AUDIT_ACTIONS = [
    "tenant.plan_change", "tenant.status_change", "tenant.enforcement_mode_change", "ati_token.issue",
    "ati_token.revoke", "ati_token.update", "policy_rule.create", "policy_rule.update", "policy_rule.delete",
    "plan.matrix_update", "provider_credential.create", "provider_credential.update", "provider_credential.delete",
    "quota_request.create", "quota_request.approve", "quota_request.deny",
]


# ------------------------------------------------------------------------------------------- reports

REPORT_GROUPS = {"tenant": "tenant_id", "user": "user_id", "task": "task_id", "model": "model_name", "day": "day"}


def usage_report_rows(*, start: date, end: date, group_by: str, tenant_id: int | None = None) -> list[dict]:
    """Usage for a period (inclusive days) grouped by tenant, user, task, model or day, from the rollup."""
    if group_by not in REPORT_GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(REPORT_GROUPS)}")
    field = REPORT_GROUPS[group_by]
    rows = UsageDaily.objects.filter(day__gte=start, day__lte=end)
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    fields = [field] if group_by != "user" or tenant_id is not None else ["tenant_id", field]
    data = [_clean(r) for r in rows.values(*fields).annotate(**_sums()).order_by(*fields)]
    if group_by == "tenant" or "tenant_id" in fields:
        slugs = dict(Tenant.objects.filter(pk__in={r["tenant_id"] for r in data}).values_list("pk", "slug"))
    if group_by == "user":
        users = dict(User.objects.filter(pk__in={r["user_id"] for r in data if r["user_id"]})
                     .values_list("pk", "username"))
    codes = task_codes()
    result = []
    for r in data:
        out: dict[str, Any] = {}
        if "tenant_id" in fields:
            out["tenant"] = slugs.get(r["tenant_id"], str(r["tenant_id"]))
        if group_by == "user":
            out["user"] = users.get(r["user_id"], "(deleted user)") if r["user_id"] else "(none)"
        elif group_by == "task":
            out["task"] = codes.get(r["task_id"], str(r["task_id"]))
        elif group_by == "model":
            out["model"] = r["model_name"] or "(none: refused or failed before a model)"
        elif group_by == "day":
            out["day"] = r["day"].isoformat()
        out.update({name: r[name] for name in ("requests", "refused", "tokens_in", "tokens_out", "total_tokens",
                                                "tokens_cached_in", "tokens_cache_write", "api_calls",
                                                "cost_micro_usd")})
        out["cost_usd"] = f"{r['cost_micro_usd'] / 1_000_000:.6f}"
        result.append(out)
    if group_by in ("tenant", "user", "model"):
        result.sort(key=lambda r: -r["cost_micro_usd"])
    return result


# ---------------------------------------------------------------------------------- live: last 48 hours

HOURLY_HOURS = 48


def hour_range(now: datetime, hours: int = HOURLY_HOURS) -> list[datetime]:
    """The last `hours` whole UTC hours, oldest first, the current (partial) hour last."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [end - timedelta(hours=hours - 1 - i) for i in range(hours)]


def hourly_by(*, start: datetime, field: str, tenant_id: int | None = None) -> dict[tuple[datetime, Any], dict]:
    """Sums per (UTC hour, field) since `start`, counted as the daily rollup counts (refused calls apart).

    Read from the ledger, not a rollup: DESIGN §3 allows indexed ledger ranges, and this is one — at
    most 48 hours of `admitted_at` through the usagelog_time / usagelog_tenant_time indexes, grouped
    by hour in the database so at most 48 rows per task or user come back. An hourly rollup would add
    a second upsert to every settlement (the hot path) to save a bounded range read; the overview's
    callers share one result per poll interval (`hourly_cached`) so polling consoles do not multiply it.
    """
    rows = UsageLog.objects.filter(admitted_at__gte=start)
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    refused = Q(status=UsageLog.Status.REFUSED)
    data = (rows.annotate(hour=TruncHour("admitted_at", tzinfo=UTC)).values("hour", field)
            .annotate(requests=Count("id", filter=~refused), refused=Count("id", filter=refused),
                      tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"), api_calls=Sum("api_calls"),
                      cost_micro_usd=Sum("cost_micro_usd")).order_by())
    return {(r["hour"], r[field]): _clean(r) for r in data}


def hourly_cached(*, now: datetime, field: str,
                  tenant_id: int | None = None) -> tuple[list[datetime], dict[tuple[datetime, Any], dict]]:
    """`hourly_by` over the last 48 hours, shared by every console process for one poll interval."""
    ttl = max(1, settings.CONSOLE_POLL_SECONDS)
    hours = hour_range(now)
    key = f"console:hourly:{field}:{tenant_id or 'all'}:{int(now.timestamp()) // ttl}"
    cells = cache.get(key)
    if cells is None:
        cells = hourly_by(start=hours[0], field=field, tenant_id=tenant_id)
        cache.set(key, cells, ttl * 2)
    return hours, cells


# ------------------------------------------------------------------------------------ provider health

HEALTH_WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}
HEALTH_MAX_ROWS = 50_000


@dataclass
class ModelHealthRow:
    provider: str
    model_name: str
    calls: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies: list[int] | None = None
    breaker: str = "closed"
    breaker_failures: int = 0
    active: bool = True

    @property
    def error_rate(self) -> float:
        return round(self.errors * 100 / self.calls, 1) if self.calls else 0.0

    def _percentile(self, q: float) -> int | None:
        values = sorted(self.latencies or [])
        if not values:
            return None
        # Nearest rank: a value a call actually took, never an interpolated one.
        return values[max(0, math.ceil(q * len(values)) - 1)]

    @property
    def p50_ms(self) -> int | None:
        return self._percentile(0.50)

    @property
    def p95_ms(self) -> int | None:
        return self._percentile(0.95)


def _health_stats(*, now: datetime, window: str) -> tuple[dict[tuple[str, str], ModelHealthRow], int]:
    """The window's ledger numbers per provider model (see provider_health)."""
    since = now - HEALTH_WINDOWS[window]
    rows = list(
        UsageLog.objects.filter(admitted_at__gte=since).exclude(status=UsageLog.Status.REFUSED)
        .order_by("-admitted_at").values_list("provider", "model_name", "status", "latency_ms", "attempts")
        [:HEALTH_MAX_ROWS]
    )
    stats: dict[tuple[str, str], ModelHealthRow] = {}

    def row_for(provider: str, model: str) -> ModelHealthRow:
        if (provider, model) not in stats:
            stats[(provider, model)] = ModelHealthRow(provider=provider, model_name=model, latencies=[])
        return stats[(provider, model)]

    for provider, model, status, latency_ms, attempts in rows:
        failed = [a for a in attempts or [] if a.get("model")]
        final_failed = status == UsageLog.Status.ERROR and bool(failed)
        for index, attempt in enumerate(failed):
            entry = row_for(attempt.get("provider", ""), attempt["model"])
            entry.calls += 1
            entry.errors += 1
            if not (final_failed and index == len(failed) - 1):
                entry.fallbacks += 1  # another candidate was tried after this one
        if not model or final_failed:
            continue  # no provider reached, or the serving attempt is the last failed one counted above
        entry = row_for(provider, model)
        entry.calls += 1
        if status == UsageLog.Status.ERROR:
            entry.errors += 1
        elif status == UsageLog.Status.SUCCESS:
            entry.latencies.append(max(0, latency_ms - sum(int(a.get("latency_ms") or 0) for a in failed)))
    return stats, len(rows)


def provider_health(*, now: datetime, window: str = "1h") -> dict[str, Any]:
    """Per provider model over the window: provider calls (every attempt, failed ones included), errors,
    error rate, p50/p95 latency of the successful calls, fallbacks (failed attempts the router moved on
    from to another candidate), and the breaker state in the shared cache now.

    Reads an indexed ledger range (usagelog_time), newest first and capped at HEALTH_MAX_ROWS calls: a
    health panel wants the recent picture, not the whole day of a busy gateway."""
    from catalog.selectors import provider_models_active
    from llm import router

    # The ledger part is shared by every console process for one poll interval; the breaker state is read fresh.
    ttl = max(1, settings.CONSOLE_POLL_SECONDS)
    key = f"console:health:{window}:{int(now.timestamp()) // ttl}"
    cached = cache.get(key)
    if cached is None:
        cached = _health_stats(now=now, window=window)
        cache.set(key, cached, ttl * 2)
    stats, calls_read = cached
    since = now - HEALTH_WINDOWS[window]

    def row_for(provider: str, model: str) -> ModelHealthRow:
        if (provider, model) not in stats:
            stats[(provider, model)] = ModelHealthRow(provider=provider, model_name=model, latencies=[])
        return stats[(provider, model)]

    models = provider_models_active()
    shared = router.shared_snapshot(models)
    clock = time.time()
    for info in models:
        entry = row_for(info.provider, info.model_name)
        state = shared[(info.provider, info.model_name)].breaker(clock)
        entry.breaker, entry.breaker_failures = state.state, state.failures
    active = {(m.provider, m.model_name) for m in models}
    for ident, entry in stats.items():
        entry.active = ident in active
    ordered = sorted(stats.values(), key=lambda r: ({"open": 0, "half_open": 1}.get(r.breaker, 2), -r.error_rate,
                                                     r.provider, r.model_name))
    return {"rows": ordered, "window": window, "since": since, "calls_read": calls_read,
            "capped": calls_read >= HEALTH_MAX_ROWS}


# ------------------------------------------------------------------------------------------ overrides

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def overrides(*, tenant_id: int | None = None, query: str = "", active: str = "") -> QuerySet[PolicyRule]:
    """TENANT rules and the USER rules of tenants' users, inactive ones included (shown as such)."""
    rows = (PolicyRule.objects.filter(Q(scope=PolicyRule.Scope.TENANT) | Q(scope=PolicyRule.Scope.USER))
            .select_related("tenant", "user__tenant", "task"))
    if tenant_id is not None:
        rows = rows.filter(Q(tenant_id=tenant_id) | Q(user__tenant_id=tenant_id))
    if query:
        rows = rows.filter(Q(tenant__slug__icontains=query) | Q(user__tenant__slug__icontains=query)
                           | Q(user__username__icontains=query) | Q(key__icontains=query))
    if active in ("yes", "no"):
        rows = rows.filter(is_active=active == "yes")
    return rows.order_by("-is_active", "scope", "key", "task__code", "pk")


def rule_window_text(rule: PolicyRule) -> str:
    """'Mon-Fri 09:00-18:00 Europe/Paris', or '' for a rule that always applies."""
    if rule.weekdays is None and rule.start_time is None and rule.end_time is None:
        return ""
    days = ",".join(WEEKDAY_NAMES[d] for d in sorted(rule.weekdays)) if rule.weekdays else "every day"
    if rule.weekdays and sorted(rule.weekdays) == [0, 1, 2, 3, 4]:
        days = "Mon-Fri"
    start = rule.start_time.strftime("%H:%M") if rule.start_time else "00:00"
    end = rule.end_time.strftime("%H:%M") if rule.end_time else "24:00"
    return f"{days} {start}-{end} {rule.timezone}"


def rule_condition_text(rule: PolicyRule) -> str:
    if not rule.when_quota_key:
        return ""
    return f"once {rule.when_quota_key} ≥ {rule.when_usage_percent_gte}%"
