"""The staff console: server-rendered pages over the selectors, writes through the services.

Every page needs a staff session that meets the sign-in rules (`adminconsole.otp.staff_required`:
two-factor for password logins, SSO; anyone else goes to the admin login); every write additionally
needs a superuser.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from datetime import date, timedelta
from functools import wraps

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
from gateway_project.errors import GatewayError
from metering.models import PolicyRule
from metering.policy_keys import POLICY_KEYS
from tenants.audit import AuditSource
from tenants.models import Tenant
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


# ------------------------------------------------------------------------------------------ overview


@console_view
def overview(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    data = selectors.overview(today=now.date())
    days, labels, names = data["days"], _labels(data["days"]), data["task_names"]
    cells = data["by_task"]
    context = {
        "section": "overview",
        "data": data,
        "live": selectors.reservations_live(now=now),
        "alerts": selectors.alerts_recent(),
        "chart_requests": charts.stacked_bar_chart(
            labels, selectors.series_by(days, cells, "requests", names), title="Requests per day, by task",
            y_label="requests"),
        "chart_tokens": charts.stacked_bar_chart(
            labels, selectors.series_by(days, cells, "total_tokens", names), title="Tokens per day, by task",
            y_label="tokens (in + out)"),
        "chart_cost": charts.stacked_bar_chart(
            labels, selectors.series_by(days, cells, "cost_micro_usd", names), title="Cost per day, by task",
            y_label="cost (USD)", fmt=charts.usd_from_micro),
        "chart_top": charts.hbar_chart(
            [r["slug"] for r in data["top_tenants"]], [r["cost_micro_usd"] for r in data["top_tenants"]],
            title="Top 10 tenants by cost, last 30 days", x_label="cost (USD)", fmt=charts.usd_from_micro),
    }
    return _page(request, "overview.html", context)


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


@console_view
def tenant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant.objects.select_related("signup_ati_token"), slug=slug)
    if request.method == "POST":
        return _override_post(request, tenant)
    now = timezone.now()
    data = selectors.tenant_detail(tenant=tenant, today=now.date(), now=now)
    days, labels = data["days"], _labels(data["days"])
    context = {
        "section": "tenants",
        "tenant": tenant,
        "data": data,
        "chart_task_tokens": charts.stacked_bar_chart(
            labels, selectors.series_by(days, data["by_task"], "total_tokens", data["task_names"]),
            title="Tokens per day, by task", y_label="tokens (in + out)"),
        "chart_task_requests": charts.stacked_bar_chart(
            labels, selectors.series_by(days, data["by_task"], "requests", data["task_names"]),
            title="Requests per day, by task", y_label="requests"),
        "chart_user_tokens": charts.line_chart(
            labels, selectors.series_by(days, data["by_user"], "total_tokens", data["user_names"]),
            title="Tokens per day, top users", y_label="tokens (in + out)"),
        "policy_keys": sorted(POLICY_KEYS.values(), key=lambda k: (k.kind.value, k.name)),
        "tasks": tasks_all(),
        "form": request.session.pop("override_form", None),
        "plans": Plan.objects.filter(is_active=True).order_by("code"),
    }
    return _page(request, "tenant_detail.html", context)


def _override_post(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    url = reverse("adminconsole:tenant", args=[tenant.slug]) + "#overrides"
    try:
        if request.POST.get("delete"):
            services.policy_rule_delete(rule_id=int(request.POST["delete"]), scope=PolicyRule.Scope.TENANT,
                                        subject_id=tenant.pk, actor=request.user)
            messages.success(request, "Override removed; the plan's rule applies again from the next call.")
        elif request.POST.get("rule"):
            rule = services.policy_rule_value_set(rule_id=int(request.POST["rule"]), scope=PolicyRule.Scope.TENANT,
                                                  subject_id=tenant.pk, value=request.POST.get("value", ""),
                                                  actor=request.user)
            messages.success(request, f"Override {rule.key} is now {rule.value}, from the next call.")
        else:
            rule = services.tenant_override_set(
                tenant=tenant, key=request.POST.get("key", ""), value=request.POST.get("value", ""),
                task_code=request.POST.get("task") or None, note=request.POST.get("note", ""), actor=request.user,
            )
            messages.success(request, f"Override saved: {rule.key} = {rule.value} "
                                      f"({rule.task.code if rule.task_id else 'all tasks'}), from the next call.")
    except (GatewayError, ValueError) as exc:
        # Keep what was typed so the form shows it again next to the error.
        request.session["override_form"] = {k: request.POST.get(k, "") for k in ("key", "value", "task", "note")}
        messages.error(request, getattr(exc, "message", str(exc)))
    return redirect(url)


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
                                               "total_tokens", "api_calls", "cost_micro_usd", "cost_usd"]
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
