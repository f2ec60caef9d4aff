"""`{% rollout_panel tenant %}`: the rollout panel of a tenant's console page (last 30 days)."""

from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils import timezone

from metering.rollout import rollout_report
from metering.selectors import USAGE_DEFAULT_DAYS
from tenants.models import EnforcementMode

register = template.Library()


@register.inclusion_tag("adminconsole/_rollout_panel.html", takes_context=True)
def rollout_panel(context, tenant) -> dict:
    today = timezone.now().date()
    report = rollout_report(tenant=tenant, day_from=today - timedelta(days=USAGE_DEFAULT_DAYS), day_to=today)
    request = context.get("request")
    return {"part": report["tenants"][0], "report": report, "tenant": tenant, "request": request,
            "csrf_token": context.get("csrf_token"), "modes": EnforcementMode.values,
            "can_write": bool(request and request.user.is_superuser)}
