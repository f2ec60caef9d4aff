"""The alert slice's tables: quota alerts, in-app notifications, alert channels, the delivery log and
the daily usage digests.

They belong to the metering app (app_label "metering", their tables and migrations unchanged);
metering/models.py imports them so that Django finds them. Import them from here.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class QuotaAlert(models.Model):
    class Kind(models.TextChoices):
        QUOTA_WARNING = "QUOTA_WARNING", "Quota warning (80 %)"
        QUOTA_EXCEEDED = "QUOTA_EXCEEDED", "Quota exceeded (100 %)"
        CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT", "Concurrency limit (90 %)"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="quota_alerts")
    meter = models.ForeignKey("metering.UsageMeter", on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    period_start = models.DateTimeField()
    policy_key = models.CharField(max_length=64)
    limit_value = models.BigIntegerField()
    observed_value = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "metering"
        ordering = ["-created_at"]
        constraints = [
            # Once per meter, kind and period: the database decides, not a check-then-insert.
            models.UniqueConstraint(fields=["meter", "kind", "period_start"], name="uniq_alert_meter_kind_period"),
        ]
        indexes = [models.Index(fields=["tenant", "created_at"], name="alert_tenant_time")]

    def __str__(self) -> str:
        return f"{self.kind} {self.policy_key} ({self.tenant_id})"


class Notification(models.Model):
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="notifications")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    alert = models.ForeignKey(QuotaAlert, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "metering"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "user"], condition=Q(alert__isnull=False), name="uniq_notification_alert_user"
            ),
        ]
        indexes = [models.Index(fields=["user", "read_at"], name="notification_user_read")]

    def __str__(self) -> str:
        return self.title


class AlertChannel(models.Model):
    """Where a tenant's quota alerts go. A tenant with no channel at all gets the defaults: email to its
    active admins (plus the in-app notifications every alert creates). See metering/alerts/README.md."""

    class Kind(models.TextChoices):
        EMAIL = "EMAIL", "Email to the tenant's admins"
        IN_APP = "IN_APP", "In-app notification"
        WEBHOOK = "WEBHOOK", "Webhook (signed JSON)"
        SLACK = "SLACK", "Slack incoming webhook"
        TEAMS = "TEAMS", "Microsoft Teams incoming webhook"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="alert_channels")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=100)
    target = models.CharField(max_length=2000, blank=True, help_text="The http(s) URL; blank for email and in-app.")
    secret_encrypted = models.TextField(
        blank=True, editable=False, help_text="Webhooks: the signing secret, Fernet-encrypted at rest."
    )
    is_active = models.BooleanField(default=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    disabled_reason = models.CharField(max_length=300, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "metering"
        ordering = ["tenant", "name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="uniq_alertchannel_tenant_name"),
            models.CheckConstraint(
                condition=Q(kind__in=["EMAIL", "IN_APP"], target="") | (Q(kind__in=["WEBHOOK", "SLACK", "TEAMS"])
                                                                        & ~Q(target="")),
                name="alertchannel_target_matches_kind",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "is_active"], name="alertchannel_tenant_active")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class AlertDelivery(models.Model):
    """The delivery log: one row per alert and channel (or per alert and default kind when the
    tenant has no channel). A delivery is claimed with a conditional update before it is sent."""

    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        SENDING = "SENDING", "Sending"
        SENT = "SENT", "Sent"
        FAILED = "FAILED", "Failed (will retry)"
        DEAD = "DEAD", "Dead (gave up)"

    alert = models.ForeignKey(QuotaAlert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(
        AlertChannel, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries",
        help_text="Empty = a default delivery of a tenant without channels.",
    )
    kind = models.CharField(max_length=8, choices=AlertChannel.Kind.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="FAILED: when the next attempt is due. SENDING: when the claim expires."
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "metering"
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "alert deliveries"
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel"], condition=Q(channel__isnull=False),
                                    name="uniq_alertdelivery_alert_channel"),
            models.UniqueConstraint(fields=["alert", "kind"], condition=Q(channel__isnull=True),
                                    name="uniq_alertdelivery_alert_default_kind"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="alertdelivery_status_due"),
            models.Index(fields=["channel", "created_at"], name="alertdelivery_channel_time"),
        ]

    def __str__(self) -> str:
        return f"alert {self.alert_id} -> {self.channel_id or self.kind}: {self.status}"


class UsageDigest(models.Model):
    """One daily usage digest per tenant and day: the row is the claim, so a digest is never sent twice."""

    class Status(models.TextChoices):
        SENDING = "SENDING", "Sending"
        SENT = "SENT", "Sent"
        SKIPPED = "SKIPPED", "Skipped (no recipient)"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="usage_digests")
    day = models.DateField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.SENDING)
    recipients = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "metering"
        ordering = ["-day", "tenant"]
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="uniq_usagedigest_tenant_day")]

    def __str__(self) -> str:
        return f"digest {self.tenant_id} {self.day} {self.status}"
