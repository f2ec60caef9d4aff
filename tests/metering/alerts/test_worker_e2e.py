"""End to end through a REAL Celery worker and the Redis broker (CI runs this; elsewhere it skips).

A metered call crosses 80 % of a daily quota; its settlement commits a QuotaAlert and enqueues
`alert_notify` on the broker; a separate `celery worker` process (on the test's PostgreSQL database)
fans it out and delivers: email to a local SMTP server (aiosmtpd on 127.0.0.1), a signed webhook to a
loopback receiver that checks the HMAC itself, and a receiver that fails twice (HTTP 500) and then
succeeds, which must end with exactly one successful delivery after two retries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email import message_from_bytes
from pathlib import Path

import pytest
from django.conf import settings

from metering.alerts.models import AlertDelivery, Notification, QuotaAlert
from tests.conftest import require_postgres
from tests.integration.gateway_server import database_url, free_port
from tests.metering.alerts.receivers import signature_ok
from tests.metering.alerts.test_delivery import PER_CALL, metered_call, warn_at_next_call

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def broker_and_postgres(transactional_db):
    require_postgres("PostgreSQL shared with the worker process")


class SmtpInbox:
    """aiosmtpd on 127.0.0.1: every message it accepts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[dict] = []
        self.lock = threading.Lock()
        inbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
                with inbox.lock:
                    inbox.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                           "message": message_from_bytes(envelope.content)})
                return "250 Message accepted for delivery"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp():
    inbox = SmtpInbox()
    yield inbox
    inbox.stop()


@pytest.fixture
def celery_not_eager():
    from gateway_project.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    app.control.purge()  # nothing left over from an earlier, interrupted run
    yield app
    app.conf.task_always_eager = previous
    app.control.purge()


def start_worker(smtp_port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": os.environ["REDIS_URL"],
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "SECRET_KEY": settings.SECRET_KEY,
        "CREDENTIALS_ENCRYPTION_KEY": settings.CREDENTIALS_ENCRYPTION_KEY,  # it decrypts the webhook secrets
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_port),
        "DEFAULT_FROM_EMAIL": "alerts@gateway.test",
        "ALERT_RETRY_BACKOFF_SECONDS": "0.5",  # retries after 0.5 s, then 1 s
        "ALERT_ALLOW_PRIVATE_TARGETS": "true",  # the receivers are on loopback
        "ALERT_HTTP_TIMEOUT_SECONDS": "5",
        "LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gateway_project", "worker", "--pool=solo", "-Q", "celery",
             "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-n", f"alerts-e2e-{uuid.uuid4().hex[:8]}@%h"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def stop_worker(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()[-4000:]}")


@pytest.mark.postgres
@pytest.mark.redis
def test_a_real_worker_delivers_an_alert_by_email_and_signed_webhooks_with_retries(
        broker_and_postgres, celery_not_eager, tenant_admin, member, smtp, receiver_factory):
    signed = receiver_factory()
    flaky = receiver_factory(statuses=[500, 500])  # then 200
    client = tenant_admin.client
    assert client.post("/api/alert-channels/", {"kind": "EMAIL", "name": "admins"}, format="json").status_code == 201
    signed_channel = client.post("/api/alert-channels/", {"kind": "WEBHOOK", "name": "signed", "target": signed.url},
                                 format="json").json()
    flaky_channel = client.post("/api/alert-channels/", {"kind": "WEBHOOK", "name": "flaky", "target": flaky.url},
                                format="json").json()
    # The receivers check the signature themselves and answer 401 to a bad one.
    signed.secret, flaky.secret = signed_channel["secret"], flaky_channel["secret"]
    warn_at_next_call(tenant_admin.tenant)

    log = Path(tempfile.mkdtemp()) / "worker.log"
    worker = start_worker(smtp.port, log)
    try:
        started = time.monotonic()
        r = metered_call(member)
        call_seconds = time.monotonic() - started
        assert r.status_code == 200, r.content

        def all_sent() -> bool:
            return AlertDelivery.objects.filter(status="SENT").count() == 3

        wait_until(all_sent, 90, "three SENT deliveries", log)
        time.sleep(2.0)  # room for any duplicate or stray retry to show up
    finally:
        stop_worker(worker)

    (alert,) = QuotaAlert.objects.filter(tenant=tenant_admin.tenant)
    assert alert.kind == "QUOTA_WARNING" and alert.observed_value == PER_CALL
    assert alert.notified_at is not None  # alert_notify ran in the worker
    assert Notification.objects.filter(alert=alert, user=tenant_admin.user).count() == 1
    assert call_seconds < 5  # the call never waited on any channel

    # Email: one message, to the tenant's admin, through the SMTP server.
    (mail_msg,) = smtp.messages
    assert mail_msg["to"] == [tenant_admin.user.email] and mail_msg["from"] == "alerts@gateway.test"
    assert "tenant_tokens_per_day is over 80 %" in mail_msg["message"]["Subject"]

    # The signed webhook: one request, signature verified by the receiver.
    (request,) = signed.requests
    assert request.answered == 200 and signature_ok(signed.secret, request.headers, request.body)
    assert request.json()["alert_id"] == alert.pk and request.json()["tenant"] == tenant_admin.tenant.slug

    # The flaky receiver: 500, 500, then exactly one success, all for the same delivery, each one signed.
    assert [r.answered for r in flaky.requests] == [500, 500, 200]
    assert len(flaky.successes()) == 1
    assert len({r.headers["X-Gateway-Delivery"] for r in flaky.requests}) == 1
    assert all(signature_ok(flaky.secret, r.headers, r.body) for r in flaky.requests)
    delivery = AlertDelivery.objects.get(channel_id=flaky_channel["id"])
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.last_error) == ("SENT", 3, 200, "")
    assert [d.attempts for d in AlertDelivery.objects.exclude(pk=delivery.pk)] == [1, 1]
