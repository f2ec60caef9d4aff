"""Django Admin of the alert slice: quota alerts and the delivery log (read-only), notifications,
alert channels (written through metering.alerts.services: validated, audited) and usage digests.
Loaded by metering/admin.py (Django reads each app's admin module only)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from gateway_project.errors import GatewayError
from metering.alerts import services
from metering.alerts.models import AlertChannel, AlertDelivery, Notification, QuotaAlert, UsageDigest


class ReadOnlyAdminMixin:
    """Rows written only by the gateway: visible to staff, never added, edited or deleted here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class NotifiedFilter(admin.SimpleListFilter):
    title = "notified"
    parameter_name = "notified"

    def lookups(self, request, model_admin):
        return [("yes", "Notified"), ("no", "Not notified yet")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(notified_at__isnull=self.value() == "no")
        return queryset


@admin.register(QuotaAlert)
class QuotaAlertAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "tenant", "kind", "policy_key", "observed_value", "limit_value", "percent",
                    "period_start", "notified_at"]
    list_filter = ["kind", NotifiedFilter, "policy_key"]
    list_select_related = ["tenant"]
    search_fields = ["=tenant__slug", "policy_key"]
    search_help_text = "Exact tenant slug, or a policy key."
    date_hierarchy = "created_at"

    @admin.display(description="% of limit")
    def percent(self, obj: QuotaAlert) -> str:
        if not obj.limit_value:
            return "-"
        return f"{obj.observed_value * 100 // obj.limit_value}%"


class ReadFilter(admin.SimpleListFilter):
    title = "read"
    parameter_name = "read"

    def lookups(self, request, model_admin):
        return [("no", "Unread"), ("yes", "Read")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(read_at__isnull=self.value() == "no")
        return queryset


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "user", "kind", "title", "is_read"]
    list_filter = [ReadFilter, "kind"]
    list_select_related = ["tenant", "user"]
    search_fields = ["title", "=tenant__slug", "=user__username"]
    date_hierarchy = "created_at"
    actions = ["mark_read", "mark_unread"]
    fields = ["tenant", "user", "alert", "kind", "title", "body", "created_at", "read_at"]
    readonly_fields = ["tenant", "user", "alert", "kind", "title", "body", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="read", boolean=True)
    def is_read(self, obj: Notification) -> bool:
        return obj.read_at is not None

    @admin.action(description="Mark selected notifications as read", permissions=["change"])
    def mark_read(self, request, queryset):
        count = queryset.filter(read_at__isnull=True).update(read_at=timezone.now())
        self.message_user(request, f"Marked {count} notification(s) as read.", messages.SUCCESS)

    @admin.action(description="Mark selected notifications as unread", permissions=["change"])
    def mark_unread(self, request, queryset):
        count = queryset.filter(read_at__isnull=False).update(read_at=None)
        self.message_user(request, f"Marked {count} notification(s) as unread.", messages.SUCCESS)


# ------------------------------------------------------------------------------------ alert delivery


class AlertChannelAdminForm(forms.ModelForm):
    """The API's rules: URL kinds need an http(s) target, email and in-app none; names unique per tenant."""

    class Meta:
        model = AlertChannel
        fields = ["tenant", "kind", "name", "target", "is_active"]

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind") or (self.instance.kind if self.instance.pk else None)
        if kind:
            try:
                cleaned["target"] = services._target_clean(kind, cleaned.get("target", ""))
            except GatewayError as exc:
                self.add_error("target", exc.message)
        return cleaned


@admin.register(AlertChannel)
class AlertChannelAdmin(admin.ModelAdmin):
    form = AlertChannelAdminForm
    list_display = ["name", "tenant", "kind", "target", "is_active", "consecutive_failures", "disabled_reason",
                    "deliveries_link", "created_at"]
    list_filter = ["kind", "is_active"]
    list_select_related = ["tenant"]
    search_fields = ["name", "=tenant__slug"]
    search_help_text = "Channel name, or an exact tenant slug."
    readonly_fields = ["has_secret", "consecutive_failures", "disabled_reason", "disabled_at", "created_at",
                       "updated_at"]
    actions = ["enable_channels", "disable_channels", "rotate_secrets", "reencrypt_secrets"]

    def get_readonly_fields(self, request, obj=None):
        # The kind decides what the row means (and a webhook's secret): fixed once created.
        return [*self.readonly_fields, "kind", "tenant"] if obj else self.readonly_fields

    @admin.display(description="signing secret")
    def has_secret(self, obj: AlertChannel) -> str:
        return "set (encrypted; shown once when created or rotated)" if obj.secret_encrypted else "-"

    @admin.display(description="deliveries")
    def deliveries_link(self, obj: AlertChannel):
        return format_html('<a href="{}?channel__id__exact={}">log</a>',
                           reverse("admin:metering_alertdelivery_changelist"), obj.pk)

    # Writes go through the channel services (audited; the admin site's audit_context names the staff user).
    def save_model(self, request, obj: AlertChannel, form, change) -> None:
        if not change:
            created, secret = services.alert_channel_create(tenant_id=obj.tenant_id, kind=obj.kind, name=obj.name,
                                                            target=obj.target)
            if secret:
                self.message_user(request, f"Signing secret of '{created.name}' (shown only now): {secret}",
                                  messages.WARNING)
            # The admin goes on with the row the service created (its log entry and redirect).
            obj.pk, obj._state.adding = created.pk, False
            obj.refresh_from_db()
            return
        stored = AlertChannel.objects.get(pk=obj.pk)
        services.alert_channel_update(channel=stored, name=obj.name, target=obj.target, is_active=obj.is_active,
                                      disabled_reason="Disabled by a super admin.")

    def delete_model(self, request, obj: AlertChannel) -> None:
        services.alert_channel_delete(channel=obj)

    def delete_queryset(self, request, queryset) -> None:
        for channel in queryset.order_by("pk"):
            services.alert_channel_delete(channel=channel)

    @admin.action(description="Re-enable (clears the failure count)", permissions=["change"])
    def enable_channels(self, request, queryset):
        channels = list(queryset.filter(is_active=False).order_by("pk"))
        for channel in channels:
            services.alert_channel_update(channel=channel, is_active=True)
        self.message_user(request, f"Re-enabled {len(channels)} channel(s).", messages.SUCCESS)

    @admin.action(description="Disable", permissions=["change"])
    def disable_channels(self, request, queryset):
        channels = list(queryset.filter(is_active=True).order_by("pk"))
        for channel in channels:
            services.alert_channel_update(channel=channel, is_active=False,
                                          disabled_reason="Disabled by a super admin.")
        self.message_user(request, f"Disabled {len(channels)} channel(s).", messages.SUCCESS)

    @admin.action(description="Rotate webhook signing secret (shows the new one once)", permissions=["change"])
    def rotate_secrets(self, request, queryset):
        for channel in queryset.filter(kind=AlertChannel.Kind.WEBHOOK):
            secret = services.alert_channel_secret_rotate(channel=channel)
            self.message_user(request, f"New signing secret of '{channel.name}' ({channel.tenant}): {secret}",
                              messages.WARNING)

    @admin.action(description="Re-encrypt every signing secret with the newest key", permissions=["change"])
    def reencrypt_secrets(self, request, queryset):
        self.message_user(request, f"Re-encrypted {services.alert_channel_secrets_reencrypt()} secret(s).",
                          messages.SUCCESS)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "alert", "tenant", "channel", "kind", "status", "attempts", "response_status",
                    "short_error", "next_attempt_at", "sent_at"]
    list_filter = ["status", "kind"]
    list_select_related = ["alert__tenant", "channel"]
    search_fields = ["=alert__tenant__slug", "channel__name"]
    search_help_text = "Exact tenant slug, or a channel name."
    date_hierarchy = "created_at"
    actions = ["retry_now"]
    show_full_result_count = False

    @admin.display(description="tenant")
    def tenant(self, obj: AlertDelivery):
        return obj.alert.tenant

    @admin.display(description="last error")
    def short_error(self, obj: AlertDelivery) -> str:
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("metering.change_alertchannel")

    @admin.action(description="Retry now (failed or dead deliveries of active channels)", permissions=["retry"])
    def retry_now(self, request, queryset):
        rows = queryset.filter(status__in=[AlertDelivery.Status.FAILED, AlertDelivery.Status.DEAD]).filter(
            Q(channel__isnull=True) | Q(channel__is_active=True))
        picked = list(rows.values_list("pk", "kind"))
        AlertDelivery.objects.filter(pk__in=[pk for pk, _ in picked]).update(
            status=AlertDelivery.Status.FAILED, next_attempt_at=timezone.now())
        transaction.on_commit(lambda: services.deliveries_enqueue(picked), robust=True)
        self.message_user(request, f"Queued {len(picked)} deliver(ies) for another attempt.", messages.SUCCESS)


@admin.register(UsageDigest)
class UsageDigestAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["day", "tenant", "status", "recipients", "sent_at"]
    list_filter = ["status"]
    list_select_related = ["tenant"]
    search_fields = ["=tenant__slug"]
    date_hierarchy = "day"
