"""Writes of alert delivery: channels, the fan-out of an alert into deliveries, one delivery attempt
(claim -> send -> record), disabling failing channels, notifications, the daily digest, pruning.

Everything here runs in Celery tasks after the metered call's transaction committed: a slow or failing
channel never holds up a metered call. No database transaction is open while a channel is contacted.
"""

from __future__ import annotations

import logging
import threading
import time as time_module
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from gateway_project.errors import BadRequest, Conflict, NotFound
from metering.alerts import channels as ch
from metering.alerts import selectors
from metering.alerts.crypto import (
    SecretDecryptionError,
    secret_decrypt,
    secret_encrypt,
    secret_generate,
    secret_reencrypt,
)
from metering.alerts.models import AlertChannel, AlertDelivery, Notification, QuotaAlert, UsageDigest
from metering.dispatch import task_enqueue
from metering.models import Metric
from tenants.audit import audit_record, changed_fields

logger = logging.getLogger("gateway.alerts")

Kind = AlertChannel.Kind
Status = AlertDelivery.Status
URL_KINDS = {Kind.WEBHOOK, Kind.SLACK, Kind.TEAMS}
# A tenant without any channel gets these (the in-app notifications are created for every alert anyway).
DEFAULT_KINDS = [Kind.EMAIL]
CHANNEL_DISABLED_KIND = "ALERT_CHANNEL_DISABLED"
CLAIM_SKEW = timedelta(seconds=1)  # a retry message may run a moment before next_attempt_at


# ========================================================================================= channels

def _target_clean(kind: str, target: str | None) -> str:
    target = (target or "").strip()
    if kind in URL_KINDS:
        if not target:
            raise BadRequest(f"A {kind.lower()} channel needs a target URL.", code="invalid_target")
        try:
            return ch.target_validate(target)
        except ch.InvalidTarget as exc:
            raise BadRequest(str(exc), code="invalid_target") from None
    if target:
        raise BadRequest(f"A {kind.lower()} channel has no target: it goes to the tenant's admins.",
                         code="invalid_target")
    return ""


def _name_clean(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise BadRequest("A channel needs a name.", code="invalid_name")
    return name


def _channel_snapshot(channel: AlertChannel) -> dict:
    """What the audit log shows of a channel: never its signing secret, only whether it has one."""
    return {"kind": channel.kind, "name": channel.name, "target": channel.target, "is_active": channel.is_active,
            "signed": bool(channel.secret_encrypted)}


def _channel_audit(action: str, channel: AlertChannel, before: dict | None, after: dict | None, *,
                   actor=None, source: str | None = None, channel_id: int | None = None) -> None:
    audit_record(action=action, object_type="alert_channel", object_id=channel_id or channel.pk,
                 tenant=channel.tenant_id, before=before, after=after, actor=actor, source=source)


@transaction.atomic
def alert_channel_create(*, tenant_id: int, kind: str, name: str, target: str = "", actor=None,
                         source: str | None = None) -> tuple[AlertChannel, str | None]:
    """Create a channel. A webhook gets a generated signing secret, returned here once and never again.
    Every channel write is audited (`actor` / `source`: see tenants.audit)."""
    if kind not in Kind.values:
        raise BadRequest(f"Unknown channel kind '{kind}'.", code="invalid_kind")
    name, target = _name_clean(name), _target_clean(kind, target)
    secret = secret_generate() if kind == Kind.WEBHOOK else None
    try:
        with transaction.atomic():
            channel = AlertChannel.objects.create(tenant_id=tenant_id, kind=kind, name=name, target=target,
                                                  secret_encrypted=secret_encrypt(secret) if secret else "")
    except IntegrityError:
        raise Conflict(f"A channel named '{name}' already exists.", code="alert_channel_exists") from None
    _channel_audit("alert_channel.create", channel, None, _channel_snapshot(channel), actor=actor, source=source)
    return channel, secret


@transaction.atomic
def alert_channel_update(*, channel: AlertChannel, name: str | None = None, target: str | None = None,
                         is_active: bool | None = None, disabled_reason: str = "Deactivated by a tenant admin.",
                         actor=None, source: str | None = None) -> AlertChannel:
    """Rename, retarget, deactivate or re-enable. Re-enabling clears the failure count and the reason."""
    stored = AlertChannel.objects.filter(pk=channel.pk).first()
    before = _channel_snapshot(stored) if stored is not None else None
    if name is not None:
        channel.name = _name_clean(name)
    if target is not None:
        channel.target = _target_clean(channel.kind, target)
    if is_active is not None and is_active != channel.is_active:
        channel.is_active = is_active
        if is_active:
            channel.consecutive_failures, channel.disabled_reason, channel.disabled_at = 0, "", None
        else:
            channel.disabled_reason, channel.disabled_at = disabled_reason, timezone.now()
    try:
        with transaction.atomic():
            channel.save()
    except IntegrityError:
        raise Conflict(f"A channel named '{channel.name}' already exists.", code="alert_channel_exists") from None
    old, new = changed_fields(before, _channel_snapshot(channel))
    if old or new:
        action = "alert_channel.update"
        if set(new) == {"is_active"}:
            action = "alert_channel.activate" if new["is_active"] else "alert_channel.deactivate"
        _channel_audit(action, channel, old, new, actor=actor, source=source)
    return channel


@transaction.atomic
def alert_channel_delete(*, channel: AlertChannel, actor=None, source: str | None = None) -> None:
    channel_id, before = channel.pk, _channel_snapshot(channel)
    channel.delete()  # its delivery log goes with it
    _channel_audit("alert_channel.delete", channel, before, None, actor=actor, source=source, channel_id=channel_id)


@transaction.atomic
def alert_channel_secret_rotate(*, channel: AlertChannel, actor=None, source: str | None = None) -> str:
    """A new signing secret for a webhook channel, returned once. The old one stops working at once."""
    if channel.kind != Kind.WEBHOOK:
        raise BadRequest("Only webhook channels have a signing secret.", code="no_secret")
    secret = secret_generate()
    channel.secret_encrypted = secret_encrypt(secret)
    channel.save(update_fields=["secret_encrypted", "updated_at"])
    _channel_audit("alert_channel.secret_rotate", channel, None, None, actor=actor, source=source)
    return secret


def alert_channel_secrets_reencrypt() -> int:
    """After prepending a new key to CREDENTIALS_ENCRYPTION_KEY: re-encrypt every secret with it."""
    count = 0
    for channel in AlertChannel.objects.exclude(secret_encrypted="").only("pk", "secret_encrypted"):
        AlertChannel.objects.filter(pk=channel.pk, secret_encrypted=channel.secret_encrypted).update(
            secret_encrypted=secret_reencrypt(channel.secret_encrypted))
        count += 1
    return count


# ========================================================================================= fan-out

@transaction.atomic
def alert_deliveries_create(*, alert_id: int) -> list[int]:
    """One delivery per active channel of the alert's tenant (the defaults when it has no channel),
    each enqueued after commit. Idempotent: a second run creates nothing new and only re-enqueues
    deliveries still PENDING, which the claim makes harmless."""
    alert = QuotaAlert.objects.filter(pk=alert_id).first()
    if alert is None:
        return []
    channels = list(AlertChannel.objects.filter(tenant_id=alert.tenant_id))
    if channels:
        rows = [AlertDelivery(alert=alert, channel=c, kind=c.kind) for c in channels if c.is_active]
    else:
        rows = [AlertDelivery(alert=alert, channel=None, kind=kind) for kind in DEFAULT_KINDS]
    AlertDelivery.objects.bulk_create(rows, ignore_conflicts=True)
    pending = list(AlertDelivery.objects.filter(alert=alert, status=Status.PENDING).values_list("id", "kind"))
    transaction.on_commit(lambda: deliveries_enqueue(pending), robust=True)
    return [pk for pk, _ in pending]


def _network_kind(kind: str) -> bool:
    return kind in URL_KINDS or (kind == Kind.EMAIL and "smtp" in settings.EMAIL_BACKEND)


def deliveries_enqueue(deliveries: list[tuple[int, str]]) -> None:
    """Hand each delivery to its task. With a broker that is a message; in the embedded mode (Celery
    eager) network deliveries run on a background thread so that they never delay the request whose
    commit enqueued them (ALERT_EAGER_IN_BACKGROUND)."""
    from gateway_project.celery import app

    for delivery_id, kind in deliveries:
        try:
            if (app.conf.task_always_eager and settings.ALERT_EAGER_IN_BACKGROUND
                    and _network_kind(kind)):
                threading.Thread(target=_deliver_in_background, args=(delivery_id,), daemon=True,
                                 name=f"alert-delivery-{delivery_id}").start()
            else:
                task_enqueue("metering.tasks.deliver_alert", delivery_id)
        except Exception:  # a broker outage must not break anything: the beat sweeper picks it up
            logger.exception("could not enqueue alert delivery %s; the retry sweeper will", delivery_id)


def _deliver_in_background(delivery_id: int) -> None:
    # Embedded mode only: no worker, no beat, so this thread also waits out short backoffs itself.
    try:
        while True:
            result = delivery_attempt(delivery_id=delivery_id)
            if result.outcome != "retry" or result.retry_in is None \
                    or result.retry_in > settings.ALERT_EAGER_MAX_WAIT_SECONDS:
                return
            time_module.sleep(result.retry_in)
    except Exception:
        logger.exception("background alert delivery %s failed", delivery_id)
    finally:
        connections.close_all()  # this thread's own connections


def deliveries_retry_due(*, now: datetime | None = None) -> int:
    """Beat: re-enqueue deliveries that are due or whose task was lost (the claim prevents doubles), and
    alerts whose `alert_notify` never ran (the broker was down when their settlement committed)."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.ALERT_PENDING_GRACE_SECONDS)
    for alert_id in selectors.alerts_unnotified(now=now, grace=grace):
        try:
            task_enqueue("metering.tasks.alert_notify", alert_id)
        except Exception:
            logger.exception("could not enqueue alert_notify for alert %s", alert_id)
    due = selectors.deliveries_due(now=now, pending_grace=grace)
    deliveries_enqueue(due)
    return len(due)


# ========================================================================================= one attempt

@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # sent | retry | dead | skipped
    retry_in: float | None = None
    detail: str = ""


def backoff_seconds(attempt: int) -> float:
    """Exponential: base, 2 x base, 4 x base ... capped (ALERT_RETRY_BACKOFF_SECONDS / _MAX_SECONDS)."""
    return min(settings.ALERT_RETRY_BACKOFF_MAX_SECONDS,
               settings.ALERT_RETRY_BACKOFF_SECONDS * (2 ** max(0, attempt - 1)))


def delivery_claim(*, delivery_id: int, now: datetime) -> int | None:
    """PENDING / due FAILED / lease-expired SENDING -> SENDING with attempts + 1, in one conditional
    UPDATE that must change exactly one row. Returns the attempt number, or None when someone else
    has it, it is not due yet, or it is finished (a SENT delivery is never claimed again)."""
    claimable = (Q(status=Status.PENDING)
                 | Q(status=Status.FAILED, next_attempt_at__lte=now + CLAIM_SKEW)
                 | Q(status=Status.FAILED, next_attempt_at__isnull=True)
                 | Q(status=Status.SENDING, next_attempt_at__lt=now))
    lease = timedelta(seconds=settings.ALERT_SENDING_LEASE_SECONDS)
    claimed = AlertDelivery.objects.filter(claimable, pk=delivery_id).update(
        status=Status.SENDING, attempts=F("attempts") + 1, next_attempt_at=now + lease, updated_at=now)
    if claimed != 1:
        return None
    return AlertDelivery.objects.values_list("attempts", flat=True).get(pk=delivery_id)


def _message(delivery: AlertDelivery) -> ch.AlertMessage:
    from metering.policy_keys import POLICY_KEYS

    alert = delivery.alert
    meter = alert.meter
    policy_key = POLICY_KEYS.get(alert.policy_key)
    unit = "micro-USD" if meter.metric == Metric.COST else (policy_key.unit if policy_key else meter.metric.lower())
    return ch.alert_message(
        delivery_id=delivery.pk, alert_id=alert.pk, tenant_slug=alert.tenant.slug, tenant_name=alert.tenant.name,
        kind=alert.kind, kind_label=alert.get_kind_display(), key=alert.policy_key,
        task=meter.task.code if meter.task_id else None, user=meter.user.username if meter.user_id else None,
        metric=meter.metric, window=meter.window, unit=unit, limit=alert.limit_value, observed=alert.observed_value,
        period=alert.period_start, created_at=alert.created_at,
    )


def _send(delivery: AlertDelivery) -> ch.SendResult:
    message = _message(delivery)
    channel = delivery.channel
    if delivery.kind == Kind.EMAIL:
        return ch.send_email(subject=message.title, body=ch.email_body(message),
                             recipients=selectors.tenant_admin_emails(tenant_id=delivery.alert.tenant_id))
    if delivery.kind == Kind.IN_APP:
        created = alert_notifications_create(alert_id=delivery.alert_id)  # idempotent; usually done already
        return ch.SendResult(detail=f"in-app notifications in place ({created} new)")
    if delivery.kind == Kind.WEBHOOK:
        try:
            secret = secret_decrypt(channel.secret_encrypted)
        except SecretDecryptionError as exc:
            raise ch.DeliveryError(str(exc)) from None
        return ch.send_webhook(message, url=channel.target, secret=secret)
    if delivery.kind == Kind.SLACK:
        return ch.send_slack(message, url=channel.target)
    if delivery.kind == Kind.TEAMS:
        return ch.send_teams(message, url=channel.target)
    raise ch.DeliveryError(f"Unknown channel kind {delivery.kind}.")


def delivery_attempt(*, delivery_id: int, now: datetime | None = None) -> AttemptResult:
    """Claim, send (no transaction open), record. Safe to run any number of times for one delivery."""
    now = now or timezone.now()
    attempt = delivery_claim(delivery_id=delivery_id, now=now)
    if attempt is None:
        return AttemptResult("skipped")
    delivery = AlertDelivery.objects.select_related(
        "alert__tenant", "alert__meter__task", "alert__meter__user", "channel").get(pk=delivery_id)
    if delivery.channel is not None and not delivery.channel.is_active:
        _record(delivery_id, attempt, status=Status.DEAD, error="The channel is disabled.")
        return AttemptResult("dead", detail="channel disabled")
    try:
        result = _send(delivery)
    except ch.DeliveryError as exc:
        return _failure(delivery, attempt, error=exc.message, response_status=exc.response_status)
    except Exception as exc:  # a bug or an unexpected library error: recorded and retried, never left SENDING
        logger.exception("alert delivery %s crashed", delivery_id)
        return _failure(delivery, attempt, error=f"Internal error: {type(exc).__name__}", response_status=None)
    with transaction.atomic():
        if not _record(delivery_id, attempt, status=Status.SENT, response_status=result.response_status,
                       sent_at=timezone.now()):
            return AttemptResult("skipped", detail="claim lost")
        if delivery.channel_id is not None:
            AlertChannel.objects.filter(pk=delivery.channel_id, consecutive_failures__gt=0).update(
                consecutive_failures=0)
    logger.info("alert delivery %s sent (attempt %s, %s)", delivery_id, attempt, delivery.kind)
    return AttemptResult("sent", detail=result.detail)


def _record(delivery_id: int, attempt: int, *, status: str, error: str = "", response_status: int | None = None,
            sent_at: datetime | None = None, next_attempt_at: datetime | None = None) -> bool:
    """Write the outcome only if this attempt still holds the claim (a reclaimed lease wins)."""
    return AlertDelivery.objects.filter(pk=delivery_id, status=Status.SENDING, attempts=attempt).update(
        status=status, last_error=error[:2000], response_status=response_status, sent_at=sent_at,
        next_attempt_at=next_attempt_at, updated_at=timezone.now()) == 1


@transaction.atomic
def _failure(delivery: AlertDelivery, attempt: int, *, error: str, response_status: int | None) -> AttemptResult:
    now = timezone.now()
    delay = backoff_seconds(attempt)
    give_up = attempt >= settings.ALERT_DELIVERY_MAX_ATTEMPTS
    status = Status.DEAD if give_up else Status.FAILED
    if not _record(delivery.pk, attempt, status=status, error=error, response_status=response_status,
                   next_attempt_at=None if give_up else now + timedelta(seconds=delay)):
        return AttemptResult("skipped", detail="claim lost")
    logger.warning("alert delivery %s failed (attempt %s, %s): %s", delivery.pk, attempt, delivery.kind, error)
    channel_id = delivery.channel_id
    if channel_id is not None:
        AlertChannel.objects.filter(pk=channel_id).update(consecutive_failures=F("consecutive_failures") + 1)
        failures = AlertChannel.objects.values_list("consecutive_failures", flat=True).get(pk=channel_id)
        if failures >= settings.ALERT_CHANNEL_MAX_FAILURES:
            _channel_disable(channel_id=channel_id, failures=failures, last_error=error, now=now)
            return AttemptResult("dead", detail="channel disabled")
    if give_up:
        return AttemptResult("dead", detail=error)
    return AttemptResult("retry", retry_in=delay, detail=error)


def _channel_disable(*, channel_id: int, failures: int, last_error: str, now: datetime) -> None:
    reason = f"Disabled after {failures} consecutive failed deliveries; last error: {last_error}"[:300]
    if AlertChannel.objects.filter(pk=channel_id, is_active=True).update(
            is_active=False, disabled_reason=reason, disabled_at=now) != 1:
        return  # already disabled by someone else
    # Nothing more goes to it until a tenant admin re-enables it.
    AlertDelivery.objects.filter(
        channel_id=channel_id, status__in=[Status.PENDING, Status.FAILED, Status.SENDING]
    ).update(status=Status.DEAD, next_attempt_at=None, last_error="The channel was disabled.", updated_at=now)
    channel = AlertChannel.objects.get(pk=channel_id)
    _channel_audit("alert_channel.disable", channel, {"is_active": True}, {"is_active": False, "reason": reason})
    Notification.objects.bulk_create([
        Notification(tenant_id=channel.tenant_id, user_id=user_id, kind=CHANNEL_DISABLED_KIND,
                     title=f"Alert channel '{channel.name}' was disabled", body=reason)
        for user_id in selectors.tenant_admin_ids(tenant_id=channel.tenant_id)
    ])
    logger.warning("alert channel %s disabled: %s", channel_id, reason)


# ========================================================================================= notifications

def notification_mark_read(*, user_id: int, tenant_id: int, notification_id: int,
                           now: datetime | None = None) -> Notification:
    rows = selectors.notifications_for_user(user_id=user_id, tenant_id=tenant_id).filter(pk=notification_id)
    rows.filter(read_at__isnull=True).update(read_at=now or timezone.now())
    notification = rows.first()
    if notification is None:  # someone else's notification is indistinguishable from none
        raise NotFound("No such notification.", code="notification_not_found")
    return notification


def notifications_mark_all_read(*, user_id: int, tenant_id: int, now: datetime | None = None) -> int:
    return selectors.notifications_for_user(user_id=user_id, tenant_id=tenant_id, unread_only=True).update(
        read_at=now or timezone.now())


def _delete_in_batches(queryset, batch: int = 2000) -> int:
    total = 0
    model = queryset.model
    while ids := list(queryset.values_list("pk", flat=True)[:batch]):
        total += model.objects.filter(pk__in=ids).delete()[1].get(model._meta.label, 0)
    return total


def notifications_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Beat: read notifications and finished deliveries (SENT, DEAD) older than NOTIFICATION_RETENTION_DAYS.
    Unread notifications and deliveries still in flight are kept."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.NOTIFICATION_RETENTION_DAYS)
    return {
        "notifications": _delete_in_batches(Notification.objects.filter(read_at__isnull=False,
                                                                         created_at__lt=cutoff)),
        "deliveries": _delete_in_batches(AlertDelivery.objects.filter(status__in=[Status.SENT, Status.DEAD],
                                                                      created_at__lt=cutoff)),
    }


# ========================================================================================= daily digest

def usage_digests_enqueue(*, day: date) -> list[int]:
    """Beat: one digest task per active tenant that used the gateway that UTC day."""
    tenant_ids = selectors.tenants_with_usage(day=day)
    for tenant_id in tenant_ids:
        task_enqueue("metering.tasks.send_usage_digest", tenant_id, day.isoformat())
    return tenant_ids


def _usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.4f}"


def usage_digest_text(*, tenant_name: str, day: date, rows: list[dict]) -> tuple[str, str]:
    subject = f"[{tenant_name}] LLM gateway usage for {day.isoformat()}"
    header = f"{'Task':<24} {'Requests':>9} {'Refused':>8} {'Errors':>7} {'Tokens in':>12} {'Tokens out':>12} " \
             f"{'Cost':>12}"
    lines = [f"Usage of {tenant_name} on {day.isoformat()} (UTC), by task:", "", header, "-" * len(header)]
    total = {"requests": 0, "refused": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0, "cost_micro_usd": 0}
    for r in rows:
        lines.append(f"{r['task']:<24} {r['requests']:>9,} {r['refused']:>8,} {r['errors']:>7,} "
                     f"{r['tokens_in']:>12,} {r['tokens_out']:>12,} {_usd(r['cost_micro_usd']):>12}")
        for key in total:
            total[key] += r[key]
    lines += ["-" * len(header),
              f"{'Total':<24} {total['requests']:>9,} {total['refused']:>8,} {total['errors']:>7,} "
              f"{total['tokens_in']:>12,} {total['tokens_out']:>12,} {_usd(total['cost_micro_usd']):>12}",
              "", "You receive this daily digest because you are an admin of this tenant on the LLM gateway."]
    return subject, "\n".join(lines)


def usage_digest_send(*, tenant_id: int, day: date) -> str:
    """One email to the tenant's active admins with that day's usage by task. Claimed by inserting the
    (tenant, day) row first, so a repeated beat or a retried task never sends a second digest."""
    from tenants.models import Tenant

    try:
        with transaction.atomic():
            digest = UsageDigest.objects.create(tenant_id=tenant_id, day=day)
    except IntegrityError:
        return "already sent"
    tenant = Tenant.objects.get(pk=tenant_id)
    rows = selectors.usage_by_tenant_and_task(day=day, tenant_id=tenant_id).get(tenant_id, [])
    recipients = selectors.tenant_admin_emails(tenant_id=tenant_id)
    if not rows or not recipients:
        UsageDigest.objects.filter(pk=digest.pk).update(status=UsageDigest.Status.SKIPPED)
        return "skipped"
    subject, body = usage_digest_text(tenant_name=tenant.name, day=day, rows=rows)
    try:
        ch.send_email(subject=subject, body=body, recipients=recipients)
    except ch.DeliveryError:
        UsageDigest.objects.filter(pk=digest.pk).delete()  # free the claim: the task's retry sends it
        raise
    UsageDigest.objects.filter(pk=digest.pk).update(status=UsageDigest.Status.SENT, recipients=len(recipients),
                                                    sent_at=timezone.now())
    return "sent"


# ========================================================================================= in-app

@transaction.atomic
def alert_notifications_create(*, alert_id: int) -> int:
    """In-app notifications for the tenant's admins. Idempotent: claimed with a conditional update."""
    from tenants.models import User

    claimed = QuotaAlert.objects.filter(pk=alert_id, notified_at__isnull=True).update(notified_at=timezone.now())
    if claimed != 1:
        return 0
    alert = QuotaAlert.objects.select_related("meter__task").get(pk=alert_id)
    task = alert.meter.task.code if alert.meter.task_id else "all tasks"
    titles = {
        QuotaAlert.Kind.QUOTA_WARNING: f"{alert.policy_key} is over 80 % ({task})",
        QuotaAlert.Kind.QUOTA_EXCEEDED: f"{alert.policy_key} is used up ({task})",
        QuotaAlert.Kind.CONCURRENCY_LIMIT: f"{alert.policy_key} is at 90 % of its slots ({task})",
    }
    body = f"{alert.observed_value} of {alert.limit_value} ({alert.get_kind_display()})."
    admins = User.objects.filter(tenant_id=alert.tenant_id, role=User.Role.ADMIN, is_active=True)
    Notification.objects.bulk_create(
        [Notification(tenant_id=alert.tenant_id, user=admin, alert=alert, kind=alert.kind,
                      title=titles[alert.kind], body=body) for admin in admins],
        ignore_conflicts=True,
    )
    return admins.count()
