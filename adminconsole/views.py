"""The staff console: server-rendered pages over the selectors, writes through the services.

Every page needs a staff session that meets the sign-in rules (`adminconsole.otp.staff_required`:
two-factor for password logins, SSO; anyone else goes to the admin login); every write additionally
needs a superuser.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from adminconsole import charts, selectors, services
from adminconsole.models import QuotaRequest
from adminconsole.otp import staff_required
from catalog.models import Plan
from catalog.selectors import tasks_all
from gateway_project.errors import BadRequest, GatewayError, NotFound
from metering import services as metering_services
from metering.models import PolicyRule
from metering.policy_keys import POLICY_KEYS, KeyKind
from tenants.audit import AuditSource
from tenants.models import Tenant, User
from tenants.services import ati_token_retier

PAGE_SIZE = 50


def console_view(view: Callable) -> Callable:
    @staff_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method == "POST" and not request.user.is_superuser:
            raise PermissionDenied("Only super admins change the gateway from the console.")
        started = time.perf_counter()
        response = view(request, *args, **kwargs)
        response["Server-Timing"] = f"view;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    return wrapper


def _page(request: HttpRequest, template: str, context: dict) -> HttpResponse:
    context.setdefault("pending_requests", selectors.quota_requests_pending_count())
    return render(request, f"adminconsole/{template}", context)


def _error(request: HttpRequest, exc: GatewayError) -> None:
    messages.error(request, exc.message)


def _parse_date(raw: str | None) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def _labels(days: list[date]) -> list[str]:
    return [d.strftime("%m-%d") for d in days]


# ------------------------------------------------------------------------------------------ live panels
# The overview, tenant and provider pages render their live part from a fragment template; the page
# includes it once, and htmx (vendored in adminconsole/static, no CDN) re-fetches the fragment view
# every CONSOLE_POLL_SECONDS and swaps it in place: the page refreshes itself without a reload.

GRANULARITIES = ("day", "hour")


def _granularity(request: HttpRequest) -> str:
    value = request.GET.get("granularity", "day")
    return value if value in GRANULARITIES else "day"


def _hour_labels(hours: list[datetime]) -> list[str]:
    return [h.strftime("%d %Hh") for h in hours]


def _usage_charts(*, granularity: str, now: datetime, tenant_id: int | None, daily: dict[str, Any],
                  field: str, names: dict[Any, str], specs: list[tuple[str, str, str, Any, str]]) -> dict[str, Any]:
    """Charts of `specs` (context name, metric, title, formatter, kind) per day (30 days, from the
    rollup) or per hour (48 hours, see selectors.hourly_by)."""
    if granularity == "hour":
        slots, cells = selectors.hourly_cached(now=now, field=field, tenant_id=tenant_id)
        if field == "user_id":  # the same top users as the daily chart, not a line per user
            cells = {k: v for k, v in cells.items() if k[1] in names}
        labels, x_label, span = _hour_labels(slots), "hour (UTC)", "hour"
    else:
        slots, cells = daily["days"], daily[f"by_{field.removesuffix('_id')}"]
        labels, x_label, span = _labels(slots), "day (UTC)", "day"
    charts_out: dict[str, Any] = {}
    for name, metric, title, fmt, kind in specs:
        draw = charts.line_chart if kind == "line" else charts.stacked_bar_chart
        charts_out[name] = draw(labels, selectors.series_by(slots, cells, metric, names),
                                title=title.format(span=span), y_label=_Y_LABELS[metric], x_label=x_label, fmt=fmt)
    return charts_out


_Y_LABELS = {"requests": "requests", "total_tokens": "tokens (in + out)", "cost_micro_usd": "cost (USD)"}


def _overview_context(request: HttpRequest) -> dict[str, Any]:
    now = timezone.now()
    granularity = _granularity(request)
    data = selectors.overview(today=now.date())
    context = {
        "section": "overview",
        "data": data,
        "granularity": granularity,
        "poll_seconds": settings.CONSOLE_POLL_SECONDS,
        "now": now,
        "live": selectors.reservations_live(now=now),
        "alerts": selectors.alerts_recent(),
        "health": selectors.provider_health(now=now, window="1h"),
        "pending_requests": selectors.quota_requests_pending_count(),
        **_usage_charts(granularity=granularity, now=now, tenant_id=None, daily=data, field="task_id",
                        names=data["task_names"], specs=[
                            ("chart_requests", "requests", "Requests per {span}, by task", charts.compact, "bar"),
                            ("chart_tokens", "total_tokens", "Tokens per {span}, by task", charts.compact, "bar"),
                            ("chart_cost", "cost_micro_usd", "Cost per {span}, by task", charts.usd_from_micro,
                             "bar"),
                        ]),
        "chart_top": charts.hbar_chart(
            [r["slug"] for r in data["top_tenants"]], [r["cost_micro_usd"] for r in data["top_tenants"]],
            title="Top 10 tenants by cost, last 30 days", x_label="cost (USD)", fmt=charts.usd_from_micro),
    }
    return context


@console_view
def overview(request: HttpRequest) -> HttpResponse:
    return _page(request, "overview.html", _overview_context(request))


@console_view
def overview_live(request: HttpRequest) -> HttpResponse:
    return render(request, "adminconsole/_overview_live.html", _overview_context(request))


@console_view
def providers(request: HttpRequest) -> HttpResponse:
    return _page(request, "providers.html", _providers_context(request))


@console_view
def providers_live(request: HttpRequest) -> HttpResponse:
    return render(request, "adminconsole/_providers_live.html", _providers_context(request))


def _providers_context(request: HttpRequest) -> dict[str, Any]:
    window = request.GET.get("window", "1h")
    if window not in selectors.HEALTH_WINDOWS:
        window = "1h"
    now = timezone.now()
    return {"section": "providers", "health": selectors.provider_health(now=now, window=window), "window": window,
            "windows": list(selectors.HEALTH_WINDOWS), "now": now, "poll_seconds": settings.CONSOLE_POLL_SECONDS}


# -------------------------------------------------------------------------------------------- tenants


@console_view
def tenant_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    page = Paginator(selectors.tenants_page_rows(query=query), PAGE_SIZE).get_page(request.GET.get("page"))
    today = timezone.now().date()
    totals = selectors.usage_totals_for_tenants(tenant_ids=[t.pk for t in page], start=today - timedelta(days=29),
                                                end=today)
    rows = [{"tenant": t, "usage": totals.get(t.pk)} for t in page]
    return _page(request, "tenant_list.html", {"section": "tenants", "page": page, "rows": rows, "q": query})


def _tenant_context(request: HttpRequest, tenant: Tenant) -> dict[str, Any]:
    now = timezone.now()
    granularity = _granularity(request)
    data = selectors.tenant_detail(tenant=tenant, today=now.date(), now=now)
    return {
        "section": "tenants",
        "tenant": tenant,
        "data": data,
        "now": now,
        "granularity": granularity,
        "poll_seconds": settings.CONSOLE_POLL_SECONDS,
        **_usage_charts(granularity=granularity, now=now, tenant_id=tenant.pk, daily=data, field="task_id",
                        names=data["task_names"], specs=[
                            ("chart_task_tokens", "total_tokens", "Tokens per {span}, by task", charts.compact,
                             "bar"),
                            ("chart_task_requests", "requests", "Requests per {span}, by task", charts.compact,
                             "bar"),
                        ]),
        **_usage_charts(granularity=granularity, now=now, tenant_id=tenant.pk, daily=data, field="user_id",
                        names=data["user_names"], specs=[
                            ("chart_user_tokens", "total_tokens", "Tokens per {span}, top users", charts.compact,
                             "line"),
                        ]),
    }


@console_view
def tenant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant.objects.select_related("signup_ati_token"), slug=slug)
    if request.method == "POST":
        return _override_post(request, tenant=tenant,
                              back=reverse("adminconsole:tenant", args=[tenant.slug]) + "#overrides")
    context = _tenant_context(request, tenant)
    context.update({
        "policy_keys": sorted(POLICY_KEYS.values(), key=lambda k: (k.kind.value, k.name)),
        "quota_keys": sorted(k.name for k in POLICY_KEYS.values() if k.kind == KeyKind.QUOTA),
        "tasks": tasks_all(),
        "tenant_users": User.objects.filter(tenant=tenant).order_by("username")[:500],
        "weekdays": list(enumerate(selectors.WEEKDAY_NAMES)),
        "form": request.session.pop("override_form", None),
        "plans": Plan.objects.filter(is_active=True).order_by("code"),
        "override_rows": _override_rows(selectors.overrides(tenant_id=tenant.pk)),
    })
    return _page(request, "tenant_detail.html", context)


@console_view
def tenant_live(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant.objects.select_related("signup_ati_token"), slug=slug)
    part = request.GET.get("part", "lead")
    template = "_tenant_charts.html" if part == "charts" else "_tenant_lead.html"
    return render(request, f"adminconsole/{template}", _tenant_context(request, tenant))


# ------------------------------------------------------------------------------------------ overrides


def _override_rows(rules) -> list[dict[str, Any]]:
    return [{"rule": r, "window": selectors.rule_window_text(r), "condition": selectors.rule_condition_text(r),
             "subject_tenant": r.tenant if r.tenant_id else r.user.tenant if r.user_id else None}
            for r in rules]


@console_view
def overrides(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        back = request.POST.get("next", "")
        return _override_post(request, tenant=None,
                              back=back if back.startswith("/console/") else reverse("adminconsole:overrides"))
    query = request.GET.get("q", "").strip()
    active = request.GET.get("active", "")
    page = Paginator(selectors.overrides(query=query, active=active), PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return _page(request, "overrides.html", {
        "section": "overrides", "page": page, "rows": _override_rows(page), "q": query, "active": active,
        "query": params.urlencode(),
    })


def _rule_where(rule_id: int, tenant: Tenant | None) -> dict[str, Any]:
    """Which rules a console form may change: TENANT and USER rules (of this tenant, on its page)."""
    rule = PolicyRule.objects.filter(pk=rule_id, scope__in=[PolicyRule.Scope.TENANT, PolicyRule.Scope.USER]).first()
    if rule is None:
        raise NotFound("No such rule.", code="rule_unknown")
    if tenant is None:
        return {"scope": rule.scope}
    if rule.scope == PolicyRule.Scope.TENANT:
        return {"scope": rule.scope, "tenant": tenant}
    return {"scope": rule.scope, "user__tenant": tenant}


def _override_post(request: HttpRequest, *, tenant: Tenant | None, back: str) -> HttpResponse:
    actor, source = request.user, AuditSource.CONSOLE
    try:
        action = request.POST.get("action", "")
        if action in ("delete", "deactivate", "activate", "value"):
            rule_id = int(request.POST.get("rule", ""))
            where = _rule_where(rule_id, tenant)
            if action == "delete":
                metering_services.policy_rule_delete(rule_id=rule_id, where=where, actor=actor, source=source)
                messages.success(request, "Rule deleted; the less specific rule applies again from the next call.")
            elif action == "deactivate":
                rule = metering_services.policy_rule_deactivate(rule_id=rule_id, where=where, actor=actor,
                                                                source=source)
                messages.success(request, f"Rule {rule.key} switched off (kept, shown as inactive).")
            elif action == "activate":
                rule = metering_services.policy_rule_activate(rule_id=rule_id, where=where, actor=actor,
                                                              source=source)
                messages.success(request, f"Rule {rule.key} switched on again, from the next call.")
            else:
                rule = metering_services.policy_rule_update(
                    rule_id=rule_id, changes={"value": services.parse_value(request.POST.get("value", ""))},
                    where=where, actor=actor, source=source)
                messages.success(request, f"Override {rule.key} is now {rule.value}, from the next call.")
        elif tenant is not None and action == "create":
            rule = _override_create(request, tenant)
            scope = f"user {rule.user.username}" if rule.user_id else "tenant"
            messages.success(request, f"Override saved ({scope}): {rule.key} = {rule.value} "
                                      f"({rule.task.code if rule.task_id else 'all tasks'}), from the next call.")
        else:
            raise ValueError("Unknown action.")
    except (GatewayError, ValueError) as exc:
        # Keep what was typed so the form shows it again next to the error.
        request.session["override_form"] = {
            **{k: request.POST.get(k, "") for k in OVERRIDE_FORM_FIELDS},
            "weekdays": request.POST.getlist("weekdays"),
        }
        messages.error(request, getattr(exc, "message", str(exc)))
    return redirect(back)


OVERRIDE_FORM_FIELDS = ("key", "value", "task", "note", "user", "start", "end", "timezone", "when_quota",
                        "when_percent")


def _form_time(raw: str, name: str) -> dt_time | None:
    if not raw.strip():
        return None
    try:
        return datetime.strptime(raw.strip(), "%H:%M").time()
    except ValueError:
        raise BadRequest(f"{name} takes a time as HH:MM (24-hour).", code="invalid_policy") from None


def _override_create(request: HttpRequest, tenant: Tenant) -> PolicyRule:
    post = request.POST
    user = None
    if post.get("user"):
        user = User.objects.filter(tenant=tenant, username=post["user"]).first()
        if user is None:
            raise BadRequest(f"{tenant.slug} has no user '{post['user']}'.", code="user_unknown")
    weekdays = sorted({int(d) for d in post.getlist("weekdays")}) or None
    percent = post.get("when_percent", "").strip()
    return metering_services.policy_rule_set(
        scope=PolicyRule.Scope.USER if user else PolicyRule.Scope.TENANT, tenant=None if user else tenant,
        user=user, task=services._task(post.get("task") or None), key=post.get("key", ""),
        value=services.parse_value(post.get("value", "")), weekdays=weekdays,
        start_time=_form_time(post.get("start", ""), "start"), end_time=_form_time(post.get("end", ""), "end"),
        timezone_name=post.get("timezone", "").strip() or "UTC", when_quota_key=post.get("when_quota", ""),
        when_usage_percent_gte=int(percent) if percent else None, note=post.get("note", ""), actor=request.user,
        source=AuditSource.CONSOLE,
    )


# ----------------------------------------------------------------------------------------- plan changes


@console_view
def plan_changes(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        tenant = get_object_or_404(Tenant.objects.select_related("signup_ati_token"),
                                   slug=request.POST.get("tenant", ""))
        plan_code = request.POST.get("plan", "")
        try:
            before = tenant.signup_ati_token.plan_tier
            ati_token_retier(ati_id=tenant.signup_ati_token_id, plan_code=plan_code, actor=request.user,
                             source=AuditSource.CONSOLE)
        except GatewayError as exc:
            _error(request, exc)
        else:
            messages.success(request, f"Tenant {tenant.slug} moved from {before} to {plan_code}; "
                                      "effective on its next call.")
        back = request.POST.get("next", "")
        return redirect(back if back.startswith("/console/") else reverse("adminconsole:plan_changes"))
    query = request.GET.get("q", "").strip()
    page = Paginator(selectors.tenants_page_rows(query=query), PAGE_SIZE).get_page(request.GET.get("page"))
    recent = selectors.audit_events(action="tenant.plan_change")[:20]
    return _page(request, "plan_changes.html", {
        "section": "plans_change", "page": page, "q": query, "recent": recent,
        "plans": Plan.objects.filter(is_active=True).order_by("code"),
    })


# ------------------------------------------------------------------------------------------ plan matrix


@console_view
def plan_matrix(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        plan = get_object_or_404(Plan, pk=request.POST.get("plan"))
        try:
            _plan_matrix_post(request, plan)
        except (GatewayError, ValueError) as exc:
            messages.error(request, f"{plan.code}: {getattr(exc, 'message', str(exc))}")
        return redirect(reverse("adminconsole:plan_matrix") + f"#plan-{plan.code}")
    return _page(request, "plan_matrix.html", {
        "section": "matrix", "matrix": selectors.plan_matrix(),
        "policy_keys": sorted(POLICY_KEYS.values(), key=lambda k: (k.kind.value, k.name)), "tasks": tasks_all(),
    })


def _plan_matrix_post(request: HttpRequest, plan: Plan) -> None:
    action = request.POST.get("action")
    if action == "matrix":
        features = {int(v) for v in request.POST.getlist("feature")}
        access: dict[int, set[int]] = {}
        for value in request.POST.getlist("access"):
            task_id, class_id = (int(part) for part in value.split(":"))
            access.setdefault(task_id, set()).add(class_id)
        services.plan_matrix_update(plan=plan, feature_ids=features, access=access, actor=request.user)
        messages.success(request, f"{plan.code}: features and model access saved (tenants see it on their next call).")
    elif action == "rule":
        rule = services.plan_rule_set(plan=plan, key=request.POST.get("key", ""), value=request.POST.get("value", ""),
                                      task_code=request.POST.get("task") or None, actor=request.user)
        messages.success(request, f"{plan.code}: default rule {rule.key} = {rule.value} saved.")
    elif action == "edit_rule":
        rule = services.policy_rule_value_set(rule_id=int(request.POST.get("rule", "0")), scope=PolicyRule.Scope.PLAN,
                                              subject_id=plan.pk, value=request.POST.get("value", ""),
                                              actor=request.user)
        messages.success(request, f"{plan.code}: default rule {rule.key} is now {rule.value}.")
    elif action == "delete_rule":
        services.policy_rule_delete(rule_id=int(request.POST.get("rule", "0")), scope=PolicyRule.Scope.PLAN,
                                    subject_id=plan.pk, actor=request.user)
        messages.success(request, f"{plan.code}: default rule removed.")
    else:
        raise ValueError("Unknown action.")


# --------------------------------------------------------------------------------------- quota requests


@console_view
def quota_requests(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", QuotaRequest.Status.PENDING)
    rows = QuotaRequest.objects.select_related("tenant", "task", "requested_by", "decided_by")
    if status in QuotaRequest.Status.values:
        rows = rows.filter(status=status)
    page = Paginator(rows.order_by("-created_at", "-id"), PAGE_SIZE).get_page(request.GET.get("page"))
    return _page(request, "quota_requests.html", {
        "section": "quota", "page": page, "status": status, "statuses": QuotaRequest.Status.choices,
    })


@console_view
@require_POST
def quota_request_decide(request: HttpRequest, request_id: int) -> HttpResponse:
    decision = request.POST.get("decision")
    if decision not in ("approve", "deny"):
        messages.error(request, "Choose approve or deny.")
    else:
        try:
            decided = services.quota_request_decide(request_id=request_id, approve=decision == "approve",
                                                    actor=request.user, note=request.POST.get("note", ""))
        except GatewayError as exc:
            _error(request, exc)
        else:
            messages.success(request, f"Quota request #{decided.pk} {decided.status.lower()}; "
                                      f"the admins of {decided.tenant.slug} were notified.")
    return redirect(reverse("adminconsole:quota_requests"))


# --------------------------------------------------------------------------------------------- audit


@console_view
def audit_log(request: HttpRequest) -> HttpResponse:
    filters = {
        "source": request.GET.get("source", ""),
        "action": request.GET.get("action", ""),
        "tenant_slug": request.GET.get("tenant", "").strip(),
        "start": _parse_date(request.GET.get("from")),
        "end": _parse_date(request.GET.get("to")),
    }
    page = Paginator(selectors.audit_events(**filters), PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return _page(request, "audit_log.html", {
        "section": "audit", "page": page, "filters": filters, "sources": AuditSource.choices,
        "actions": selectors.AUDIT_ACTIONS, "query": query.urlencode(),
    })


# ------------------------------------------------------------------------------------------- reports

LABEL_COLUMNS = {"tenant", "user", "task", "model", "day", "cost_usd"}


def _report_cells(row: dict, columns: list[str]) -> list[tuple[str, bool]]:
    """(text, is_number) per column, formatted here: a 1000-row table renders in one cheap template loop."""
    cells = []
    for column in columns:
        value = row[column]
        if column == "cost_micro_usd":
            cells.append((f"${value / 1_000_000:,.2f}", True))
        elif column in LABEL_COLUMNS:
            cells.append((str(value), False))
        else:
            cells.append((f"{value:,}", True))
    return cells



@console_view
def reports(request: HttpRequest) -> HttpResponse:
    today = timezone.now().date()
    start = _parse_date(request.GET.get("from")) or today.replace(day=1)
    end = _parse_date(request.GET.get("to")) or today
    group_by = request.GET.get("group_by", "tenant")
    if group_by not in selectors.REPORT_GROUPS:
        group_by = "tenant"
    slug = request.GET.get("tenant", "").strip()
    tenant = Tenant.objects.filter(slug=slug).first() if slug else None
    error = ""
    if slug and tenant is None:
        error = f"No tenant with slug '{slug}'."
    elif start > end:
        error = "'from' must not be after 'to'."
    elif (end - start).days > 366:
        error = "A report covers at most 366 days."
    rows = [] if error else selectors.usage_report_rows(start=start, end=end, group_by=group_by,
                                                        tenant_id=tenant.pk if tenant else None)
    if request.GET.get("format") == "csv" and not error:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        name = f"usage_{slug or 'all'}_{group_by}_{start}_{end}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        columns = list(rows[0]) if rows else [group_by, "requests", "refused", "tokens_in", "tokens_out",
                                               "total_tokens", "tokens_cached_in", "tokens_cache_write",
                                               "api_calls", "cost_micro_usd", "cost_usd"]
        writer = csv.DictWriter(response, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return response
    if error:
        messages.error(request, error)
    totals = {k: sum(r[k] for r in rows) for k in ("requests", "refused", "total_tokens", "api_calls",
                                                     "cost_micro_usd")}
    query = request.GET.copy()
    query["format"] = "csv"
    columns = list(rows[0]) if rows else []
    return _page(request, "reports.html", {
        "section": "reports", "cells": [_report_cells(row, columns) for row in rows[:1000]],
        "truncated": len(rows) > 1000, "row_count": len(rows),
        "headers": [(c, c not in LABEL_COLUMNS) for c in columns], "totals": totals, "start": start, "end": end,
        "group_by": group_by, "groups": list(selectors.REPORT_GROUPS), "tenant_slug": slug,
        "csv_query": query.urlencode(),
    })
