"""Django Admin: the audit trail of admin edits, plus the console's own models.

The console sits above every app, so (as metering/admin.py does for its rule inlines) it re-registers
the admins whose edits must be audited -- ATI tokens, tenants, plans, users (their rule inlines),
policy rules and provider credentials -- with `AuditedAdminMixin` on top of whatever class is
registered at that point. The mixin
- runs every admin view inside `audit_context(actor=request.user, source=ADMIN)`, so the services
  the admin's actions call (suspend, revoke, issue, ...) record the right actor and source, and
- records the edits the admin saves directly (change forms, inlines, deletes) with before/after.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib import admin

from adminconsole.models import QuotaRequest
from catalog.models import Plan
from metering.models import PolicyRule, UsageDaily
from metering.services import policy_rule_snapshot
from tenants.audit import AuditEvent, AuditSource, audit_context, audit_record, changed_fields
from tenants.models import ATIToken, Tenant, User


def _value(obj: Any, name: str) -> Any:
    value = getattr(obj, name)
    return value.isoformat() if hasattr(value, "isoformat") else value


class AuditedAdminMixin:
    audit_object_type = ""
    audit_fields: tuple[str, ...] = ()
    audit_add = True  # False where adding goes through a service that records it
    audit_direct = True  # False: only the rule inlines and the service calls are audited

    # -------------------------------------------------------------- attribution of service calls
    def changeform_view(self, request, *args, **kwargs):
        with audit_context(actor=request.user, source=AuditSource.ADMIN):
            return super().changeform_view(request, *args, **kwargs)

    def changelist_view(self, request, *args, **kwargs):
        with audit_context(actor=request.user, source=AuditSource.ADMIN):
            return super().changelist_view(request, *args, **kwargs)

    def delete_view(self, request, *args, **kwargs):
        with audit_context(actor=request.user, source=AuditSource.ADMIN):
            return super().delete_view(request, *args, **kwargs)

    # ---------------------------------------------------------------------- direct edits
    def audit_snapshot(self, obj) -> dict[str, Any]:
        return {name: _value(obj, name) for name in self.audit_fields}

    def audit_tenant(self, obj) -> Any:
        return getattr(obj, "tenant_id", None)

    def audit_events(self, before: dict | None, after: dict | None) -> list[tuple[str, dict | None, dict | None]]:
        """(action, before, after) to record for one saved or deleted object."""
        kind = self.audit_object_type
        if before is None:
            return [(f"{kind}.create", None, after)]
        if after is None:
            return [(f"{kind}.delete", before, None)]
        old, new = changed_fields(before, after)
        return [(f"{kind}.update", old, new)] if old or new else []

    def _record(self, request, obj, before, after) -> None:
        for action, old, new in self.audit_events(before, after):
            audit_record(action=action, object_type=self.audit_object_type, object_id=obj.pk,
                         tenant=self.audit_tenant(obj), before=old, after=new, actor=request.user,
                         source=AuditSource.ADMIN)

    def save_model(self, request, obj, form, change):
        if not self.audit_direct:
            return super().save_model(request, obj, form, change)
        before = None
        if change:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = self.audit_snapshot(stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        if change or self.audit_add:
            self._record(request, obj, before, self.audit_snapshot(obj))

    def delete_model(self, request, obj):
        if not self.audit_direct:
            return super().delete_model(request, obj)
        before, pk = self.audit_snapshot(obj), obj.pk
        super().delete_model(request, obj)
        obj.pk = obj.pk or pk  # Django clears the pk of a deleted instance
        self._record(request, obj, before, None)

    def delete_queryset(self, request, queryset):
        if not self.audit_direct:
            return super().delete_queryset(request, queryset)
        gone = [(obj, self.audit_snapshot(obj)) for obj in queryset]
        super().delete_queryset(request, queryset)
        for obj, before in gone:
            self._record(request, obj, before, None)

    # ------------------------------------------------------------------- policy rule inlines
    def save_formset(self, request, form, formset, change):
        if formset.model is not PolicyRule:
            return super().save_formset(request, form, formset, change)
        ids = [f.instance.pk for f in formset.initial_forms if f.instance.pk]
        stored = {r.pk: policy_rule_snapshot(r)
                  for r in PolicyRule.objects.filter(pk__in=ids).select_related("plan", "tenant", "user", "task")}
        deleted_ids = {id(f.instance): f.instance.pk for f in formset.deleted_forms}
        super().save_formset(request, form, formset, change)
        for rule in formset.new_objects:
            _rule_record(request, rule, None, policy_rule_snapshot(rule))
        for rule, _fields in formset.changed_objects:
            _rule_record(request, rule, stored.get(rule.pk), policy_rule_snapshot(rule))
        for rule in formset.deleted_objects:
            rule_id = deleted_ids.get(id(rule))
            _rule_record(request, rule, stored.get(rule_id), None, rule_id=rule_id)


def _rule_record(request, rule: PolicyRule, before, after, rule_id=None) -> None:
    action = "policy_rule.create" if before is None else "policy_rule.delete" if after is None else "policy_rule.update"
    if before is not None and after is not None:
        before, after = changed_fields(before, after)
        if not before and not after:
            return
    tenant = rule.tenant_id or (rule.user.tenant_id if rule.user_id else None)
    audit_record(action=action, object_type="policy_rule", object_id=rule.pk or rule_id, tenant=tenant,
                 before=before, after=after, actor=request.user, source=AuditSource.ADMIN)


class PolicyRuleAudit(AuditedAdminMixin):
    audit_object_type = "policy_rule"

    def audit_snapshot(self, obj) -> dict[str, Any]:
        return policy_rule_snapshot(obj)

    def audit_tenant(self, obj) -> Any:
        return obj.tenant_id or (obj.user.tenant_id if obj.user_id else None)


class ATITokenAudit(AuditedAdminMixin):
    audit_object_type = "ati_token"
    audit_fields = ("plan_tier", "status", "expires_at", "note")
    audit_add = False  # issuing goes through tenants.services.ati_token_issue, which records it

    def audit_events(self, before, after):
        if before is None or after is None:
            return super().audit_events(before, after)
        old, new = changed_fields(before, after)
        events = []
        if "plan_tier" in new:
            events.append(("tenant.plan_change", {"plan_tier": old.pop("plan_tier")},
                           {"plan_tier": new.pop("plan_tier")}))
        if new.get("status") == ATIToken.Status.REVOKED:
            events.append(("ati_token.revoke", {"status": old.pop("status")}, {"status": new.pop("status")}))
        if old or new:
            events.append(("ati_token.update", old, new))
        return events


class TenantAudit(AuditedAdminMixin):
    audit_object_type = "tenant"
    audit_fields = ("name", "slug", "status", "enforcement_mode")
    audit_add = False  # the add page is the signup service

    def audit_tenant(self, obj) -> Any:
        return obj.pk

    def audit_events(self, before, after):
        if before is None or after is None:
            return super().audit_events(before, after)
        old, new = changed_fields(before, after)
        events = []
        for name in ("status", "enforcement_mode"):
            if name in new:
                events.append((f"tenant.{name}_change", {name: old.pop(name)}, {name: new.pop(name)}))
        if old or new:
            events.append(("tenant.update", old, new))
        return events


class PlanAudit(AuditedAdminMixin):
    audit_object_type = "plan"
    audit_fields = ("code", "name", "is_active")


class UserAudit(AuditedAdminMixin):
    """Users themselves are not in the audit's scope; their rule overrides (inline) are."""

    audit_direct = False


class ProviderCredentialAudit(AuditedAdminMixin):
    """Never the key itself: only that it was set or replaced, and its last four characters' hint."""

    audit_object_type = "provider_credential"
    audit_fields = ("provider", "label", "base_url", "is_active")

    def audit_snapshot(self, obj) -> dict[str, Any]:
        snapshot = super().audit_snapshot(obj)
        snapshot["key"] = getattr(obj, "key_hint", "") if getattr(obj, "has_key", False) else ""
        return snapshot


def _reregister(model, audit_mixin) -> None:
    if not admin.site.is_registered(model):
        return
    current = type(admin.site.get_model_admin(model))
    if issubclass(current, AuditedAdminMixin):
        return
    admin.site.unregister(model)
    admin.site.register(model, type(f"Audited{current.__name__}", (audit_mixin, current), {}))


_reregister(ATIToken, ATITokenAudit)
_reregister(Tenant, TenantAudit)
_reregister(Plan, PlanAudit)
_reregister(User, UserAudit)
_reregister(PolicyRule, PolicyRuleAudit)
try:
    _reregister(apps.get_model("llm", "ProviderCredential"), ProviderCredentialAudit)
except LookupError:  # pragma: no cover - the llm app without stored credentials
    pass


# ----------------------------------------------------------------------------- read-only rows


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(_ReadOnly):
    list_display = ["created_at", "actor_label", "source", "action", "object_type", "object_id", "tenant"]
    list_filter = ["source", "action", "object_type"]
    list_select_related = ["tenant"]
    search_fields = ["=object_id", "=tenant__slug", "=actor_label", "action"]
    date_hierarchy = "created_at"
    show_full_result_count = False


if admin.site.is_registered(UsageDaily):
    admin.site.unregister(UsageDaily)  # metering registers any model of its own without an admin


@admin.register(UsageDaily)
class UsageDailyAdmin(_ReadOnly):
    list_display = ["day", "tenant", "user", "task", "model_name", "requests", "refused", "tokens_in", "tokens_out",
                    "api_calls", "cost_micro_usd"]
    list_filter = ["task"]
    list_select_related = ["tenant", "user", "task"]
    search_fields = ["=tenant__slug", "=user__username"]
    date_hierarchy = "day"
    ordering = ["-day"]
    show_full_result_count = False


@admin.register(QuotaRequest)
class QuotaRequestAdmin(_ReadOnly):
    """Decided in the console (approval writes the rule and notifies the tenant); listed here read-only."""

    list_display = ["created_at", "tenant", "requested_by", "key", "task", "wanted_value", "status", "decided_by",
                    "decided_at"]
    list_filter = ["status", "key"]
    list_select_related = ["tenant", "requested_by", "task", "decided_by"]
    search_fields = ["=tenant__slug", "key"]
    date_hierarchy = "created_at"
