"""Reads for alert delivery: channels, the delivery log, notifications, digest figures."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from metering.alerts.models import AlertChannel, AlertDelivery, Notification, QuotaAlert
from metering.models import UsageLog
from tenants.models import Tenant, User


def notifications_for_user(*, user_id: int, tenant_id: int, unread_only: bool = False) -> QuerySet[Notification]:
    rows = Notification.objects.filter(user_id=user_id, tenant_id=tenant_id)
    if unread_only:
        rows = rows.filter(read_at__isnull=True)
    return rows.order_by("-created_at", "-id")


def alert_channels_for_tenant(*, tenant_id: int) -> QuerySet[AlertChannel]:
    return AlertChannel.objects.filter(tenant_id=tenant_id).order_by("name", "id")


def alert_channel_get(*, tenant_id: int, channel_id: int) -> AlertChannel | None:
    """Another tenant's channel is indistinguishable from no channel."""
    return AlertChannel.objects.filter(tenant_id=tenant_id, pk=channel_id).first()


def alert_deliveries_for_channel(*, channel_id: int) -> QuerySet[AlertDelivery]:
    return (AlertDelivery.objects.filter(channel_id=channel_id)
            .select_related("alert").order_by("-created_at", "-id"))


def tenant_admin_emails(*, tenant_id: int) -> list[str]:
    return sorted({
        email for email in User.objects.filter(
            tenant_id=tenant_id, role=User.Role.ADMIN, is_active=True
        ).exclude(email="").values_list("email", flat=True)
    })


def tenant_admin_ids(*, tenant_id: int) -> list[int]:
    return list(User.objects.filter(tenant_id=tenant_id, role=User.Role.ADMIN, is_active=True)
                .values_list("id", flat=True))


def deliveries_due(*, now: datetime, pending_grace: timedelta, limit: int = 500) -> list[tuple[int, str]]:
    """Deliveries whose task is due or was lost: FAILED past their next attempt, SENDING past their claim
    (a worker died mid-send), PENDING for longer than the grace (the enqueue was lost)."""
    rows = AlertDelivery.objects.filter(
        Q(status=AlertDelivery.Status.FAILED, next_attempt_at__lte=now)
        | Q(status=AlertDelivery.Status.SENDING, next_attempt_at__lt=now)
        | Q(status=AlertDelivery.Status.PENDING, created_at__lt=now - pending_grace)
    ).order_by("next_attempt_at", "id").values_list("id", "kind")[:limit]
    return list(rows)


def alerts_unnotified(*, now: datetime, grace: timedelta, limit: int = 200) -> list[int]:
    """Alerts of the last day that nobody notified after the grace: their alert_notify was lost."""
    return list(QuotaAlert.objects.filter(notified_at__isnull=True, created_at__lt=now - grace,
                                          created_at__gte=now - timedelta(days=1))
                .order_by("created_at").values_list("id", flat=True)[:limit])


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    low = datetime.combine(day, time.min, UTC)
    return low, low + timedelta(days=1)


def usage_by_tenant_and_task(*, day: date, tenant_id: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """One UTC day of the ledger, by tenant and task: an indexed range of one day, never a full scan."""
    low, high = _day_bounds(day)
    rows = UsageLog.objects.filter(admitted_at__gte=low, admitted_at__lt=high,
                                   tenant__status=Tenant.Status.ACTIVE)
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    result: dict[int, list[dict[str, Any]]] = {}
    for r in (rows.values("tenant_id", "task__code")
              .annotate(tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"), api_calls=Sum("api_calls"),
                        cost_micro_usd=Sum("cost_micro_usd"),
                        requests=Count("id", filter=~Q(status=UsageLog.Status.REFUSED)),
                        refused=Count("id", filter=Q(status=UsageLog.Status.REFUSED)),
                        errors=Count("id", filter=Q(status=UsageLog.Status.ERROR)))
              .order_by("tenant_id", "task__code")):
        result.setdefault(r["tenant_id"], []).append({
            "task": r["task__code"], "requests": r["requests"], "refused": r["refused"], "errors": r["errors"],
            "tokens_in": r["tokens_in"] or 0, "tokens_out": r["tokens_out"] or 0,
            "api_calls": r["api_calls"] or 0, "cost_micro_usd": r["cost_micro_usd"] or 0,
        })
    return result


def tenants_with_usage(*, day: date) -> list[int]:
    low, high = _day_bounds(day)
    return sorted(set(UsageLog.objects.filter(admitted_at__gte=low, admitted_at__lt=high,
                                              tenant__status=Tenant.Status.ACTIVE)
                      .values_list("tenant_id", flat=True).distinct()))
