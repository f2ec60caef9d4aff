"""Thin Celery tasks of the execution app."""

from __future__ import annotations

from smtplib import SMTPException

from celery import shared_task
from django.db import OperationalError

from llm import provider_alerts


@shared_task(autoretry_for=(OperationalError, SMTPException, OSError), retry_backoff=True, max_retries=5)
def provider_alert_notify(provider: str, model_name: str, code: str, detail: str) -> int:
    """Email the super admins that a provider refused the platform's credentials (llm.provider_alerts)."""
    return provider_alerts.superadmins_notify(provider=provider, model_name=model_name, code=code, detail=detail)
