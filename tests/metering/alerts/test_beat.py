"""The beat tasks: the daily usage digest, pruning, and the schedule that runs them."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from celery.schedules import crontab
from django.conf import settings
from django.core import mail
from django.utils import timezone

from catalog.models import Task
from metering.alerts import services as alert_services
from metering.alerts.models import AlertDelivery, Notification, UsageDigest
from metering.alerts.tasks import prune_notifications, send_usage_digests
from metering.models import UsageLog
from tests.metering.alerts.conftest import make_alert

pytestmark = pytest.mark.django_db(transaction=True)

DAY = date(2026, 3, 9)


def ledger_row(persona, task: str, *, at: datetime, tokens_in: int = 100, tokens_out: int = 50, cost: int = 1_500,
               status: str = "SUCCESS") -> UsageLog:
    task_obj = Task.objects.select_related("feature").get(code=task)
    return UsageLog.objects.create(
        request_id=uuid.uuid4().hex, tenant=persona.tenant, user=persona.user, task=task_obj,
        feature_code=task_obj.feature.code, provider="offline", model_name="offline-small", model_class="FAST",
        tokens_in=tokens_in if status != "REFUSED" else 0, tokens_out=tokens_out if status != "REFUSED" else 0,
        api_calls=0, cost_micro_usd=cost if status != "REFUSED" else 0, status=status, enforcement_mode="HARD",
        admitted_at=at, created_at=at)


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_the_daily_digest_mails_each_tenant_s_admins_its_usage_by_task(tenant_admin, member, outsider):
    ledger_row(member, "LLM2_DRAFT", at=at(DAY, 0), tokens_in=1_000, tokens_out=500, cost=2_500_000)
    ledger_row(tenant_admin, "LLM2_DRAFT", at=at(DAY, 23), tokens_in=200, tokens_out=100, cost=500_000)
    ledger_row(member, "LLM1_PRIOR_ART", at=at(DAY, 12), status="REFUSED")
    ledger_row(member, "LLM1_PRIOR_ART", at=at(DAY + timedelta(days=1), 0), tokens_in=9_999)  # the next day
    ledger_row(member, "LLM1_PRIOR_ART", at=at(DAY - timedelta(days=1), 23), tokens_in=8_888)  # the day before
    ledger_row(outsider, "LLM3_DIAGRAM", at=at(DAY, 8), tokens_in=70, tokens_out=30, cost=100)

    assert send_usage_digests.delay(DAY.isoformat()).get() == 2

    by_recipient = {tuple(m.to): m for m in mail.outbox}
    assert set(by_recipient) == {(tenant_admin.user.email,), (outsider.user.email,)}  # admins only
    acme = by_recipient[(tenant_admin.user.email,)]
    assert acme.subject == f"[{tenant_admin.tenant.name}] LLM gateway usage for 2026-03-09"
    lines = {line.split()[0]: line.split()[1:] for line in acme.body.splitlines() if line.startswith(("LLM", "Total"))}
    # requests, refused, errors, tokens in, tokens out, cost
    assert lines["LLM2_DRAFT"] == ["2", "0", "0", "1,200", "600", "$3.0000"]
    assert lines["LLM1_PRIOR_ART"] == ["0", "1", "0", "0", "0", "$0.0000"]
    assert lines["Total"] == ["2", "1", "0", "1,200", "600", "$3.0000"]
    assert "9,999" not in acme.body and "8,888" not in acme.body
    assert "LLM3_DIAGRAM" not in acme.body  # another tenant's usage
    assert set(UsageDigest.objects.values_list("status", flat=True)) == {"SENT"}


def test_a_digest_is_sent_once_per_tenant_and_day(tenant_admin):
    ledger_row(tenant_admin, "LLM2_DRAFT", at=at(DAY, 10))

    send_usage_digests.delay(DAY.isoformat())
    send_usage_digests.delay(DAY.isoformat())  # beat fired twice, or the task was retried

    assert len(mail.outbox) == 1
    assert alert_services.usage_digest_send(tenant_id=tenant_admin.tenant.pk, day=DAY) == "already sent"
    assert len(mail.outbox) == 1


def test_tenants_without_usage_get_no_digest(tenant_admin, outsider):
    ledger_row(tenant_admin, "LLM2_DRAFT", at=at(DAY, 10))

    send_usage_digests.delay(DAY.isoformat())

    assert [m.to for m in mail.outbox] == [[tenant_admin.user.email]]


def test_the_digest_defaults_to_yesterday_utc(tenant_admin):
    yesterday = timezone.now().date() - timedelta(days=1)
    ledger_row(tenant_admin, "LLM2_DRAFT", at=at(yesterday, 12))
    ledger_row(tenant_admin, "LLM1_PRIOR_ART", at=timezone.now())

    send_usage_digests.delay()

    (email,) = mail.outbox
    assert yesterday.isoformat() in email.subject
    assert "LLM2_DRAFT" in email.body and "LLM1_PRIOR_ART" not in email.body


def test_a_failed_digest_send_frees_its_claim_for_the_retry(tenant_admin, monkeypatch):
    from metering.alerts import channels as ch

    ledger_row(tenant_admin, "LLM2_DRAFT", at=at(DAY, 10))

    def down(**kwargs):
        raise ch.DeliveryError("Email failed: ConnectionRefusedError")

    monkeypatch.setattr(ch, "send_email", down)
    with pytest.raises(ch.DeliveryError):
        alert_services.usage_digest_send(tenant_id=tenant_admin.tenant.pk, day=DAY)
    assert not UsageDigest.objects.exists()
    monkeypatch.undo()

    assert alert_services.usage_digest_send(tenant_id=tenant_admin.tenant.pk, day=DAY) == "sent"
    assert len(mail.outbox) == 1


def test_pruning_keeps_unread_and_recent_notifications_and_unfinished_deliveries(tenant_admin, settings):
    settings.NOTIFICATION_RETENTION_DAYS = 90
    old = timezone.now() - timedelta(days=91)
    recent = timezone.now() - timedelta(days=89)

    def note(title: str, created, read: bool) -> Notification:
        n = Notification.objects.create(tenant=tenant_admin.tenant, user=tenant_admin.user, kind="T", title=title,
                                        read_at=timezone.now() if read else None)
        Notification.objects.filter(pk=n.pk).update(created_at=created)
        return n

    note("old read", old, True)
    note("old unread", old, False)
    note("recent read", recent, True)
    alert = make_alert(tenant_admin.tenant)
    for kind, status, created in [("EMAIL", "SENT", old), ("IN_APP", "DEAD", old), ("WEBHOOK", "FAILED", old),
                                  ("SLACK", "SENT", recent)]:
        d = AlertDelivery.objects.create(alert=alert, kind=kind, status=status)
        AlertDelivery.objects.filter(pk=d.pk).update(created_at=created)

    assert prune_notifications.delay().get() == {"notifications": 1, "deliveries": 2}

    assert sorted(Notification.objects.values_list("title", flat=True)) == ["old unread", "recent read"]
    assert sorted(AlertDelivery.objects.values_list("kind", "status")) == [("SLACK", "SENT"), ("WEBHOOK", "FAILED")]


def test_the_beat_schedule_runs_digest_and_pruning_daily_and_keeps_the_existing_entries():
    schedule = settings.CELERY_BEAT_SCHEDULE
    tasks = {entry["task"] for entry in schedule.values()}
    assert {"metering.tasks.expire_reservations", "metering.tasks.replay_usage_spool",
            "metering.tasks.send_usage_digests", "metering.tasks.prune_notifications",
            "metering.tasks.retry_alert_deliveries"} <= tasks
    by_task = {entry["task"]: entry["schedule"] for entry in schedule.values()}
    for name in ("metering.tasks.send_usage_digests", "metering.tasks.prune_notifications"):
        assert isinstance(by_task[name], crontab)
        assert len(by_task[name].hour) == 1 and len(by_task[name].minute) == 1  # once a day
    from gateway_project.celery import app

    app.loader.import_default_modules()
    assert tasks <= set(app.tasks)  # every scheduled name is a registered task
