"""Django Admin of the console's own models (quota requests).

Every model has one admin, in the app that owns it; this module re-registers none. Changes made in
the admin are audited where they are made -- by the services the admins call (tenants.services,
metering.services, metering.alerts.services), which record the actor and source of the
`audit_context` the admin site opens around every admin view (adminconsole/sites.py), and by the
catalog admin through catalog.changes.
"""

from __future__ import annotations

from django.contrib import admin

from adminconsole.models import QuotaRequest


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(QuotaRequest)
class QuotaRequestAdmin(_ReadOnly):
    """Decided in the console (approval writes the rule and notifies the tenant); listed here read-only."""

    list_display = ["created_at", "tenant", "requested_by", "key", "task", "wanted_value", "status", "decided_by",
                    "decided_at"]
    list_filter = ["status", "key"]
    list_select_related = ["tenant", "requested_by", "task", "decided_by"]
    search_fields = ["=tenant__slug", "key"]
    date_hierarchy = "created_at"
