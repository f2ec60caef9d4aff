"""Alert delivery on SQLite with eager Celery: fan-out, claims, retries, disabling, every channel kind.
HTTP channels post to real loopback receivers; email goes to Django's test outbox."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone

from llm.tokenizer import messages_tokens
from metering.alerts import channels as ch
from metering.alerts import services as alert_services
from metering.alerts.crypto import secret_decrypt
from metering.alerts.models import AlertChannel, AlertDelivery, Notification, QuotaAlert
from metering.alerts.tasks import alert_notify, deliver_alert, retry_alert_deliveries
from metering.services import policy_rule_set
from tests.metering.alerts.conftest import make_alert
from tests.metering.alerts.receivers import signature_ok

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM1_PRIOR_ART"
MESSAGES = [{"role": "user", "content": "A hinge with a self-locking detent for folding patent drawings."}]
MAX_OUT = 10  # the offline provider always writes more, so each call uses exactly PER_CALL tokens
PER_CALL = messages_tokens(MESSAGES) + MAX_OUT
Status = AlertDelivery.Status


def metered_call(persona):
    return persona.client.post(f"/v1/{TASK}/chat/completions",
                               {"model": "auto", "messages": MESSAGES, "max_tokens": MAX_OUT}, format="json")


def warn_at_next_call(tenant) -> None:
    """A daily tenant quota that one call takes from 0 to 90 %: one QUOTA_WARNING, no QUOTA_EXCEEDED."""
    policy_rule_set(scope="TENANT", tenant=tenant, key="tenant_tokens_per_day", value=PER_CALL * 100 // 90)


def webhook(tenant, url: str, name: str = "hook") -> tuple[AlertChannel, str]:
    channel, secret = alert_services.alert_channel_create(tenant_id=tenant.pk, kind="WEBHOOK", name=name, target=url)
    return channel, secret


def make_due(delivery: AlertDelivery) -> None:
    AlertDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


# --- the default: email + in-app ------------------------------------------------------------------


def test_a_metered_call_crossing_80_percent_emails_the_admins_of_a_tenant_without_channels(tenant_admin, member):
    warn_at_next_call(tenant_admin.tenant)

    r = metered_call(member)

    assert r.status_code == 200, r.content
    (alert,) = QuotaAlert.objects.filter(tenant=tenant_admin.tenant)
    assert alert.kind == "QUOTA_WARNING" and alert.observed_value == PER_CALL
    (delivery,) = AlertDelivery.objects.filter(alert=alert)
    assert (delivery.channel, delivery.kind, delivery.status, delivery.attempts) == (None, "EMAIL", "SENT", 1)
    assert delivery.sent_at is not None
    (email,) = mail.outbox
    assert email.to == [tenant_admin.user.email]  # admins only, not the member who made the call
    assert "tenant_tokens_per_day is over 80 %" in email.subject
    assert f"{PER_CALL} tokens of {PER_CALL * 100 // 90} tokens" in email.body
    # In-app notifications for the admins, as before.
    assert list(Notification.objects.filter(alert=alert).values_list("user_id", flat=True)) == [tenant_admin.user.pk]


def test_a_tenant_with_an_in_app_channel_only_gets_no_email(tenant_admin):
    alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="IN_APP", name="bell")
    alert = make_alert(tenant_admin.tenant)

    alert_notify.delay(alert.pk)

    (delivery,) = AlertDelivery.objects.filter(alert=alert)
    assert (delivery.kind, delivery.status) == ("IN_APP", "SENT")
    assert mail.outbox == []
    assert Notification.objects.filter(alert=alert, user=tenant_admin.user).count() == 1


def test_inactive_channels_get_nothing_and_do_not_bring_back_the_defaults(tenant_admin):
    channel, _ = alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="EMAIL", name="mail")
    alert_services.alert_channel_update(channel=channel, is_active=False)

    alert_notify.delay(make_alert(tenant_admin.tenant).pk)

    assert not AlertDelivery.objects.exists()
    assert mail.outbox == []


def test_alert_notify_twice_creates_each_delivery_once(tenant_admin, receiver_factory):
    receiver = receiver_factory()
    webhook(tenant_admin.tenant, receiver.url)
    alert = make_alert(tenant_admin.tenant)

    alert_notify.delay(alert.pk)
    alert_notify.delay(alert.pk)

    assert AlertDelivery.objects.filter(alert=alert).count() == 1
    assert len(receiver.requests) == 1


# --- webhooks -------------------------------------------------------------------------------------


def test_a_webhook_is_signed_with_the_channel_secret(tenant_admin, receiver_factory):
    receiver = receiver_factory()
    channel, secret = webhook(tenant_admin.tenant, receiver.url)
    receiver.secret = secret  # the receiver answers 401 to a bad signature
    alert = make_alert(tenant_admin.tenant, observed=870)

    alert_notify.delay(alert.pk)

    (request,) = receiver.requests
    assert request.answered == 200 and signature_ok(secret, request.headers, request.body)
    body = request.json()
    assert (body["tenant"], body["kind"], body["key"], body["limit"], body["observed"]) == (
        tenant_admin.tenant.slug, "QUOTA_WARNING", "tenant_tokens_per_day", 1_000, 870)
    assert body["period"] == alert.period_start.isoformat() and body["created_at"] == alert.created_at.isoformat()
    delivery = AlertDelivery.objects.get(alert=alert)
    assert request.headers["X-Gateway-Delivery"] == str(delivery.pk)
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.last_error) == ("SENT", 1, 200, "")
    # The secret is stored encrypted.
    stored = AlertChannel.objects.get(pk=channel.pk).secret_encrypted
    assert secret not in stored and secret_decrypt(stored) == secret


def test_running_the_delivery_task_again_never_sends_twice(tenant_admin, receiver_factory):
    receiver = receiver_factory()
    webhook(tenant_admin.tenant, receiver.url)
    alert_notify.delay(make_alert(tenant_admin.tenant).pk)
    delivery = AlertDelivery.objects.get()
    assert delivery.status == "SENT" and len(receiver.requests) == 1

    assert deliver_alert.delay(delivery.pk).get() == "skipped"
    assert deliver_alert.apply(args=[delivery.pk]).get() == "skipped"
    retry_alert_deliveries.delay()  # the sweeper leaves a SENT delivery alone

    assert len(receiver.requests) == 1
    assert AlertDelivery.objects.get(pk=delivery.pk).attempts == 1


def test_a_claim_changes_exactly_one_row_and_a_dead_worker_s_claim_expires(tenant_admin):
    alert = make_alert(tenant_admin.tenant)
    delivery = AlertDelivery.objects.create(alert=alert, kind="EMAIL")
    now = timezone.now()

    assert alert_services.delivery_claim(delivery_id=delivery.pk, now=now) == 1
    assert alert_services.delivery_claim(delivery_id=delivery.pk, now=now) is None  # someone has it
    lease = timedelta(seconds=300)
    assert alert_services.delivery_claim(delivery_id=delivery.pk, now=now + lease - timedelta(seconds=1)) is None
    # The claimant died mid-send: after the lease another worker may claim it (attempt 2).
    assert alert_services.delivery_claim(delivery_id=delivery.pk, now=now + lease + timedelta(seconds=1)) == 2
    AlertDelivery.objects.filter(pk=delivery.pk).update(status=Status.SENT)
    assert alert_services.delivery_claim(delivery_id=delivery.pk, now=now + timedelta(days=1)) is None


def test_a_failed_delivery_is_recorded_and_retried_with_backoff(tenant_admin, receiver_factory):
    receiver = receiver_factory(statuses=[500])
    channel, _ = webhook(tenant_admin.tenant, receiver.url)
    before = timezone.now()

    alert_notify.delay(make_alert(tenant_admin.tenant).pk)

    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("FAILED", 1, 500)
    assert delivery.last_error.startswith("HTTP 500")
    assert before + timedelta(seconds=29) <= delivery.next_attempt_at <= timezone.now() + timedelta(seconds=31)
    assert len(receiver.requests) == 1  # eager Celery ran the retry at once: not due, so nothing sent
    assert AlertChannel.objects.get(pk=channel.pk).consecutive_failures == 1

    retry_alert_deliveries.delay()  # not due yet: nothing happens
    assert len(receiver.requests) == 1

    make_due(delivery)
    retry_alert_deliveries.delay()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status, delivery.last_error) == ("SENT", 2, 200, "")
    assert len(receiver.requests) == 2
    assert AlertChannel.objects.get(pk=channel.pk).consecutive_failures == 0  # a success resets the count


def test_backoff_grows_between_attempts(tenant_admin, receiver_factory):
    receiver = receiver_factory(default=503)
    webhook(tenant_admin.tenant, receiver.url)
    alert_notify.delay(make_alert(tenant_admin.tenant).pk)
    delivery = AlertDelivery.objects.get()
    waits = []
    for _ in range(3):
        delivery.refresh_from_db()
        waits.append((delivery.next_attempt_at - delivery.updated_at).total_seconds())
        make_due(delivery)
        deliver_alert.delay(delivery.pk)
    assert [round(w) for w in waits] == [30, 60, 120]
    assert len(receiver.requests) == 4


@override_settings(ALERT_CHANNEL_MAX_FAILURES=3)
def test_a_channel_is_disabled_after_n_consecutive_failures(tenant_admin, receiver_factory):
    receiver = receiver_factory(default=500)
    channel, _ = webhook(tenant_admin.tenant, receiver.url)
    alert_notify.delay(make_alert(tenant_admin.tenant).pk)
    first = AlertDelivery.objects.get()
    make_due(first)
    deliver_alert.delay(first.pk)
    assert AlertChannel.objects.get(pk=channel.pk).is_active  # 2 failures: still on

    second_alert = make_alert(tenant_admin.tenant, kind="QUOTA_EXCEEDED", observed=1_000)
    alert_notify.delay(second_alert.pk)  # the third failure in a row

    channel.refresh_from_db()
    assert not channel.is_active and channel.consecutive_failures == 3
    assert channel.disabled_reason.startswith("Disabled after 3 consecutive failed deliveries; last error: HTTP 500")
    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {"DEAD"}
    assert len(receiver.requests) == 3
    (note,) = Notification.objects.filter(kind="ALERT_CHANNEL_DISABLED")
    assert note.user == tenant_admin.user and "hook" in note.title

    # Disabled: nothing more is sent to it, by retries or by new alerts.
    make_due(first)
    retry_alert_deliveries.delay()
    alert_notify.delay(make_alert(tenant_admin.tenant, kind="CONCURRENCY_LIMIT", key="max_concurrent").pk)
    assert len(receiver.requests) == 3


@override_settings(ALERT_DELIVERY_MAX_ATTEMPTS=2, ALERT_CHANNEL_MAX_FAILURES=10)
def test_a_delivery_gives_up_after_the_last_attempt(tenant_admin, receiver_factory):
    receiver = receiver_factory(default=502)
    channel, _ = webhook(tenant_admin.tenant, receiver.url)
    alert_notify.delay(make_alert(tenant_admin.tenant).pk)
    delivery = AlertDelivery.objects.get()
    make_due(delivery)
    deliver_alert.delay(delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("DEAD", 2, None)
    make_due(delivery)
    retry_alert_deliveries.delay()
    assert len(receiver.requests) == 2
    assert AlertChannel.objects.get(pk=channel.pk).is_active


@override_settings(ALERT_HTTP_TIMEOUT_SECONDS=0.3)
def test_a_slow_receiver_times_out_and_is_retried(tenant_admin, receiver_factory):
    receiver = receiver_factory(delay=2.0)
    webhook(tenant_admin.tenant, receiver.url)
    started = time.monotonic()

    alert_notify.delay(make_alert(tenant_admin.tenant).pk)

    assert time.monotonic() - started < 1.5
    delivery = AlertDelivery.objects.get()
    assert delivery.status == "FAILED" and delivery.last_error.startswith("Timed out")


def test_private_targets_are_refused_at_send_time_when_not_allowed(tenant_admin, receiver_factory, monkeypatch):
    receiver = receiver_factory()
    webhook(tenant_admin.tenant, receiver.url.replace("127.0.0.1", "localhost"))

    with override_settings(ALERT_ALLOW_PRIVATE_TARGETS=False):
        alert_notify.delay(make_alert(tenant_admin.tenant).pk)
        # A public-looking name that resolves to a private address is refused too (DNS rebinding).
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(0, 0, 0, "", ("10.0.0.7", 443))])
        with pytest.raises(ch.DeliveryError, match="private address"):
            ch.http_post("https://hooks.example.com/x", content=b"{}", headers={})

    delivery = AlertDelivery.objects.get()
    assert delivery.status == "FAILED" and "Refused target" in delivery.last_error
    assert receiver.requests == []


# --- Slack, Teams, email --------------------------------------------------------------------------


def test_slack_and_teams_get_their_incoming_webhook_payloads(tenant_admin, receiver_factory):
    slack, teams = receiver_factory(), receiver_factory()
    tenant_id = tenant_admin.tenant.pk
    alert_services.alert_channel_create(tenant_id=tenant_id, kind="SLACK", name="slack", target=slack.url)
    alert_services.alert_channel_create(tenant_id=tenant_id, kind="TEAMS", name="teams", target=teams.url)

    alert_notify.delay(make_alert(tenant_admin.tenant).pk)

    (slack_request,) = slack.requests
    body = slack_request.json()
    assert set(body) == {"text", "blocks"} and body["blocks"][0]["type"] == "header"
    assert "X-Gateway-Signature" not in slack_request.headers  # Slack's URL is the credential
    (teams_request,) = teams.requests
    body = teams_request.json()
    assert body["type"] == "message"
    assert body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert body["attachments"][0]["content"]["type"] == "AdaptiveCard"
    assert set(AlertDelivery.objects.values_list("kind", "status")) == {("SLACK", "SENT"), ("TEAMS", "SENT")}


def test_teams_throttling_in_a_200_body_counts_as_a_failure(tenant_admin, monkeypatch):
    monkeypatch.setattr(ch, "http_post", lambda url, **kw: ch.SendResult(
        200, "Microsoft Teams endpoint returned HTTP error 429 with ContextId ..."))
    alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="TEAMS", name="teams",
                                        target="https://example.webhook.office.com/webhookb2/x")

    alert_notify.delay(make_alert(tenant_admin.tenant).pk)

    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.response_status) == ("FAILED", 429)


def test_an_email_channel_mails_every_active_admin(tenant_admin, member):
    from tenants import services as tenant_services

    second = tenant_services.user_create(tenant=tenant_admin.tenant, username="acme-admin2",
                                         email="admin2@example.com", password="correct-horse-battery-42",
                                         role="ADMIN")
    gone = tenant_services.user_create(tenant=tenant_admin.tenant, username="acme-admin3",
                                       email="admin3@example.com", password="correct-horse-battery-42", role="ADMIN")
    gone.is_active = False
    gone.save()
    alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="EMAIL", name="mail")

    alert_notify.delay(make_alert(tenant_admin.tenant, kind="QUOTA_EXCEEDED", observed=1_000).pk)

    (email,) = mail.outbox
    assert sorted(email.to) == sorted([tenant_admin.user.email, second.email])
    assert "is used up" in email.subject


def test_an_unreachable_smtp_server_fails_the_delivery_for_a_retry(tenant_admin):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="EMAIL", name="mail")
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1",
                           EMAIL_PORT=port, EMAIL_TIMEOUT=2):
        alert_notify.delay(make_alert(tenant_admin.tenant).pk)

    delivery = AlertDelivery.objects.get()
    assert delivery.status == "FAILED" and delivery.last_error.startswith("Email failed")


# --- never in the way of the metered call ---------------------------------------------------------


def _unlocked(read, timeout: float = 10.0):
    """A read while the background delivery thread writes: SQLite's in-memory test database (shared
    cache) answers "table is locked" at once instead of waiting, which only means "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_slow_channel_does_not_slow_the_metered_call_in_embedded_mode(tenant_admin, receiver_factory):
    receiver = receiver_factory(delay=5.0)
    webhook(tenant_admin.tenant, receiver.url)
    warn_at_next_call(tenant_admin.tenant)

    with override_settings(ALERT_EAGER_IN_BACKGROUND=True, ALERT_HTTP_TIMEOUT_SECONDS=10.0):
        started = time.monotonic()
        r = metered_call(tenant_admin)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.content
        # The receiver takes 5 s to answer; a process's first metered call alone can take ~2 s
        # (tokenizer and provider set-up), so the margin is wide.
        assert elapsed < 3.5, elapsed
        receiver.wait_for(1, timeout=10)
        deadline = time.monotonic() + 10
        while _unlocked(lambda: AlertDelivery.objects.filter(status="SENT").count()) != 1 \
                and time.monotonic() < deadline:
            time.sleep(0.2)  # seldom: each read also holds the table the delivery thread writes

    delivery = _unlocked(AlertDelivery.objects.get)
    assert (delivery.status, delivery.attempts) == ("SENT", 1)
    assert json.loads(receiver.requests[0].body)["alert_id"] == delivery.alert_id


def test_a_failing_channel_does_not_fail_the_metered_call(tenant_admin, receiver_factory):
    receiver = receiver_factory(default=500)
    webhook(tenant_admin.tenant, receiver.url)
    warn_at_next_call(tenant_admin.tenant)

    r = metered_call(tenant_admin)

    assert r.status_code == 200, r.content
    assert AlertDelivery.objects.get().status == "FAILED"
    assert len(receiver.requests) == 1


def test_the_sweeper_notifies_an_alert_whose_task_was_lost(tenant_admin):
    alert = make_alert(tenant_admin.tenant)  # committed, but its alert_notify message never arrived
    QuotaAlert.objects.filter(pk=alert.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    fresh = make_alert(tenant_admin.tenant, kind="QUOTA_EXCEEDED", observed=1_000)  # may still be on its way

    retry_alert_deliveries.delay()

    alert.refresh_from_db()
    assert alert.notified_at is not None
    assert AlertDelivery.objects.get(alert=alert).status == "SENT"
    assert [m.subject for m in mail.outbox] == [mail.outbox[0].subject] and "over 80 %" in mail.outbox[0].subject
    assert not AlertDelivery.objects.filter(alert=fresh).exists()

    retry_alert_deliveries.delay()  # nothing twice
    assert len(mail.outbox) == 1
