"""The alert slice's thin Celery tasks.

Registered under their original names (metering.tasks.<name>): messages already queued, the beat
schedule (settings.CELERY_BEAT_SCHEDULE) and enqueueing by name keep working. metering/tasks.py
imports this module, so loading it (worker discovery, metering.dispatch) registers these too.
"""

from __future__ import annotations

from datetime import date, timedelta

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

from metering.alerts import channels as alert_channels
from metering.alerts import services as alert_services


@shared_task(name="metering.tasks.alert_notify",
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def alert_notify(alert_id: int) -> int:
    """A new QuotaAlert: in-app notifications for the tenant's admins, then one delivery per channel."""
    created = alert_services.alert_notifications_create(alert_id=alert_id)
    alert_services.alert_deliveries_create(alert_id=alert_id)
    return created


@shared_task(name="metering.tasks.deliver_alert",
             bind=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=10, acks_late=True)
def deliver_alert(self, delivery_id: int) -> str:
    """One attempt at one delivery. The claim makes it idempotent: a duplicate or retried message for a
    delivery that was sent (or is being sent) does nothing. A failed send is retried with exponential
    backoff until ALERT_DELIVERY_MAX_ATTEMPTS; the beat sweeper re-enqueues anything whose message was lost."""
    result = alert_services.delivery_attempt(delivery_id=delivery_id)
    if result.outcome == "retry" and not self.request.is_eager:
        raise self.retry(countdown=result.retry_in, max_retries=None)
    # Eager (embedded mode, tests): no countdown exists; the background thread or the beat sweeper retries.
    return result.outcome


@shared_task(name="metering.tasks.retry_alert_deliveries",
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def retry_alert_deliveries() -> int:
    return alert_services.deliveries_retry_due()


@shared_task(name="metering.tasks.send_usage_digests",
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def send_usage_digests(day: str | None = None) -> int:
    """Beat, daily: yesterday's (UTC) usage by task, one email per tenant with usage."""
    target = date.fromisoformat(day) if day else timezone.now().date() - timedelta(days=1)
    return len(alert_services.usage_digests_enqueue(day=target))


@shared_task(name="metering.tasks.send_usage_digest",
             autoretry_for=(OperationalError, alert_channels.DeliveryError), retry_backoff=60, max_retries=5)
def send_usage_digest(tenant_id: int, day: str) -> str:
    return alert_services.usage_digest_send(tenant_id=tenant_id, day=date.fromisoformat(day))


@shared_task(name="metering.tasks.prune_notifications",
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def prune_notifications() -> dict[str, int]:
    return alert_services.notifications_prune()
