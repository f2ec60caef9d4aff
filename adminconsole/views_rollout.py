"""The console's rollout pages: what SHADOW/SOFT let through that HARD would have refused (the Rollout
page, and the panel on each tenant's page), and the switch of a tenant's enforcement mode (audited)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from adminconsole.views import _error, _page, _parse_date, console_view
from gateway_project.errors import GatewayError
from metering.rollout import rollout_report
from metering.selectors import USAGE_DEFAULT_DAYS, UsageRangeError, usage_range
from tenants.audit import AuditSource
from tenants.models import EnforcementMode, Tenant
from tenants.services import tenant_set_enforcement_mode

INHERIT = "inherit"


@console_view
def rollout(request: HttpRequest) -> HttpResponse:
    today = timezone.now().date()
    slug = request.GET.get("tenant", "").strip()
    tenant = Tenant.objects.filter(slug=slug).first() if slug else None
    error = f"No tenant with slug '{slug}'." if slug and tenant is None else ""
    try:
        start, end = usage_range(start=_parse_date(request.GET.get("from")), end=_parse_date(request.GET.get("to")),
                                 today=today)
    except UsageRangeError as exc:
        error = error or str(exc)
        start, end = today - timedelta(days=USAGE_DEFAULT_DAYS), today
    if error:
        messages.error(request, error)
    report = None if error else rollout_report(tenant=tenant, day_from=start, day_to=end)
    return _page(request, "rollout.html", {
        "section": "rollout", "report": report, "start": start, "end": end, "tenant_slug": slug,
        "modes": EnforcementMode.values,
    })


@console_view
@require_POST
def tenant_enforcement_mode(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    raw = request.POST.get("mode", "").strip()
    mode = None if raw.lower() == INHERIT else raw.upper()
    try:
        tenant_set_enforcement_mode(slug=tenant.slug, mode=mode, actor=request.user, source=AuditSource.CONSOLE)
    except GatewayError as exc:
        _error(request, exc)
    else:
        messages.success(request, f"Tenant {tenant.slug} is now in {mode or 'the global'} enforcement mode, "
                                  "from its next call.")
    back = request.POST.get("next", "")
    return redirect(back if back.startswith("/console/") else reverse("adminconsole:tenant", args=[slug]) + "#rollout")
