"""Thin Celery tasks: take ids, call a service, retry transient failures.

The alert slice's tasks are in metering/alerts/tasks.py; imported here so that a worker's task
discovery (which reads each app's tasks module) and enqueueing by name (metering.dispatch) find them."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from metering import services, spool
from metering.alerts.tasks import (  # noqa: F401
    alert_notify,
    deliver_alert,
    prune_notifications,
    retry_alert_deliveries,
    send_usage_digest,
    send_usage_digests,
)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def expire_reservations() -> int:
    return services.reservations_expire()


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def replay_usage_spool() -> int:
    return spool.spool_replay()
