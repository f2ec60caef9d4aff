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

SUMS = ("requests", "refused", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd")


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
                                                "api_calls", "cost_micro_usd")})
        out["cost_usd"] = f"{r['cost_micro_usd'] / 1_000_000:.6f}"
        result.append(out)
    if group_by in ("tenant", "user", "model"):
        result.sort(key=lambda r: -r["cost_micro_usd"])
    return result
