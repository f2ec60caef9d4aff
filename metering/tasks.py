"""Thin Celery tasks: take ids, call a service, retry transient failures."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from metering import services


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def alert_notify(alert_id: int) -> int:
    return services.alert_notifications_create(alert_id=alert_id)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def expire_reservations() -> int:
    return services.reservations_expire()


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def replay_usage_spool() -> int:
    from metering import spool

    return spool.spool_replay()
