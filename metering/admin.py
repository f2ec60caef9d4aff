"""Django Admin for enforcement and accounting: policy rules, meters, reservations, the ledger, alerts.

Policy rules are validated by `PolicyRule.clean()` (the typed key registry's messages, at their
fields) and saved, switched off and deleted only through the policy-rule service
(metering/services/policy_rules.py), which audits and drops the cached policy: the change form, the
rule inlines and the delete pages all call it. Rules live above plans, tenants and users, so their
inlines are added here to the owning admins (catalog's Plan admin, tenants' Tenant and User admins)
-- the one hook by which a higher app shows its rows on a lower app's page; no admin is registered
twice. Ledger and meter rows are read-only. The alert slice's admins are in metering/alerts/admin.py.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.forms.models import BaseInlineFormSet
from django.utils import timezone
from django.utils.html import format_html

from catalog.admin import PlanAdmin
from metering.models import (
    PolicyRule,
    UsageDaily,
    UsageHold,
    UsageLog,
    UsageMeter,
    UsageReservation,
)
from metering.policy_keys import POLICY_KEYS, KeyKind, ValueType
from metering.services import (
    policy_rule_activate,
    policy_rule_deactivate,
    policy_rule_delete,
    policy_rule_save,
    reservation_release,
)
from tenants.admin import TenantAdmin, UserAdmin


def format_micro_usd(value: int | None) -> str:
    if value is None:
        return "-"
    dollars, micro = divmod(int(value), 1_000_000)
    return f"${dollars:,}.{f'{micro:06d}'.rstrip('0').ljust(2, '0')}"


# ----------------------------------------------------------------------------------------- policy rules

WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]
_KIND_LABELS = {
    KeyKind.PER_REQUEST: "Per-request limits",
    KeyKind.QUOTA: "Quotas (per day / month)",
    KeyKind.CONCURRENCY: "Concurrency",
    KeyKind.RATE: "Rate limits (per minute)",
    KeyKind.ACCESS: "Model access",
}


def policy_key_choices(current: str | None = None) -> list:
    groups = []
    for kind, label in _KIND_LABELS.items():
        options = [
            (key.name, f"{key.name} ({key.unit}, per {key.subject.value}): {key.description}")
            for key in POLICY_KEYS.values()
            if key.kind == kind
        ]
        if options:
            groups.append((label, options))
    choices: list = [("", "---------")] + groups
    if current and current not in POLICY_KEYS:
        choices.append((current, f"{current} (not in the registry: pick a known key)"))
    return choices


def condition_key_choices() -> list[tuple[str, str]]:
    return [("", "(always applies)")] + [
        (key.name, f"{key.name} ({key.unit})") for key in POLICY_KEYS.values() if key.kind == KeyKind.QUOTA
    ]


def format_policy_value(key: str, value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    policy_key = POLICY_KEYS.get(key)
    if policy_key is not None and policy_key.value_type == ValueType.USD:
        return f"${value}"
    return str(value)


def parse_policy_value(raw: str) -> Any:
    """The form's text -> a value for `validate_value` ("4096" -> 4096, "BASE_S, BASE_M" stays text)."""
    raw = raw.strip()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    # Floats stay text so USD amounts never round through a float.
    return raw if isinstance(parsed, float) else parsed


class RegistryKeyField(forms.ChoiceField):
    """A dropdown of the registry; an unknown key is left to PolicyRule.clean() and the registry's message."""

    def validate(self, value):
        forms.Field.validate(self, value)


class PolicyRuleForm(forms.ModelForm):
    key = RegistryKeyField(help_text="What the rule limits. The key names the counted subject and the unit.")
    value = forms.CharField(
        help_text="A whole number (e.g. 4096); for *_usd keys an amount of USD (e.g. 12.50); for "
        "allowed_model_classes the model class codes separated by commas (e.g. BASE_S, BASE_M).",
    )
    when_quota_key = forms.ChoiceField(
        required=False, label="only when quota", help_text="Apply the rule only once this quota is this % used."
    )

    class Meta:
        model = PolicyRule
        fields = [
            "scope", "plan", "tenant", "user", "task", "key", "value", "is_active", "note",
            "weekdays", "start_time", "end_time", "timezone", "when_quota_key", "when_usage_percent_gte",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["key"].choices = policy_key_choices(current=self.instance.key)
        self.fields["when_quota_key"].choices = condition_key_choices() + (
            [(self.instance.when_quota_key, self.instance.when_quota_key)]
            if self.instance.when_quota_key and self.instance.when_quota_key not in POLICY_KEYS
            else []
        )
        if "when_usage_percent_gte" in self.fields:
            self.fields["when_usage_percent_gte"].label = "at % used"
        if self.instance.pk is not None:
            self.initial["value"] = format_policy_value("", self.instance.value)

    def clean(self):
        # The row's rules are PolicyRule.clean() (run by the form's model validation, errors at their
        # fields); here only the text typed into "value" becomes a value for it.
        cleaned = super().clean()
        if isinstance(cleaned.get("value"), str):
            cleaned["value"] = parse_policy_value(cleaned["value"])
        cleaned["when_quota_key"] = cleaned.get("when_quota_key") or ""
        return cleaned


class PolicyRuleAdminForm(PolicyRuleForm):
    weekdays = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS, coerce=int, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Apply only on these days (in the rule's time zone). None ticked = every day.",
    )

    def clean_weekdays(self):
        return sorted(self.cleaned_data.get("weekdays") or []) or None


class ScopeKeyFilter(admin.SimpleListFilter):
    title = "key"
    parameter_name = "key"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(POLICY_KEYS)]

    def queryset(self, request, queryset):
        return queryset.filter(key=self.value()) if self.value() else queryset


def _subject(rule: PolicyRule) -> str:
    if rule.scope == PolicyRule.Scope.PLAN:
        return f"plan {rule.plan}"
    if rule.scope == PolicyRule.Scope.TENANT:
        return f"tenant {rule.tenant}"
    if rule.scope == PolicyRule.Scope.USER:
        return f"user {rule.user}"
    return "everyone"


def _window(rule: PolicyRule) -> str:
    if not rule.weekdays and not rule.start_time and not rule.end_time:
        return "always"
    days = ", ".join(dict(WEEKDAYS).get(d, str(d)) for d in rule.weekdays) if rule.weekdays else "every day"
    start = rule.start_time.strftime("%H:%M") if rule.start_time else "00:00"
    end = rule.end_time.strftime("%H:%M") if rule.end_time else "24:00"
    return f"{days} {start}-{end} {rule.timezone}"


def _condition(rule: PolicyRule) -> str:
    if not rule.when_quota_key:
        return "-"
    return f"when {rule.when_quota_key} >= {rule.when_usage_percent_gte}%"


@admin.register(PolicyRule)
class PolicyRuleAdmin(admin.ModelAdmin):
    form = PolicyRuleAdminForm
    list_display = ["id", "scope", "subject", "task", "key", "value_display", "window", "condition", "is_active",
                    "seeded"]
    list_display_links = ["id", "key"]
    list_filter = ["scope", ScopeKeyFilter, "task", "plan", "is_active", "seeded"]
    list_select_related = ["plan", "tenant", "user", "task"]
    search_fields = ["key", "note", "plan__code", "tenant__slug", "tenant__name", "user__username"]
    autocomplete_fields = ["tenant", "user"]
    readonly_fields = ["seeded", "created_at", "updated_at"]
    fieldsets = [
        (
            "Who",
            {
                "fields": ["scope", "plan", "tenant", "user", "task"],
                "description": "The most specific scope wins: a USER rule beats a TENANT rule, which beats a "
                "PLAN rule, which beats a GLOBAL rule. Fill in only the subject of the chosen scope. An empty task "
                "means all tasks together.",
            },
        ),
        ("What", {"fields": ["key", "value", "is_active", "note"]}),
        (
            "Time window (optional)",
            {
                "fields": ["weekdays", "start_time", "end_time", "timezone"],
                "description": "For business-hours limits. An end before the start spans midnight.",
            },
        ),
        ("Usage condition (optional)", {"fields": ["when_quota_key", "when_usage_percent_gte"]}),
        ("Record", {"fields": ["seeded", "created_at", "updated_at"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else [fs for fs in fieldsets if fs[0] != "Record"]

    @admin.display(description="subject")
    def subject(self, obj: PolicyRule) -> str:
        return _subject(obj)

    @admin.display(description="value", ordering="value")
    def value_display(self, obj: PolicyRule) -> str:
        return format_policy_value(obj.key, obj.value)

    @admin.display(description="window")
    def window(self, obj: PolicyRule) -> str:
        return _window(obj)

    @admin.display(description="condition")
    def condition(self, obj: PolicyRule) -> str:
        return _condition(obj)

    actions = ["deactivate_rules", "activate_rules"]

    # The admin site runs every view inside audit_context(actor=the staff user, source=ADMIN), so the
    # service records who made the change.
    def save_model(self, request, obj, form, change):
        policy_rule_save(rule=obj)

    def delete_model(self, request, obj):
        policy_rule_delete(rule_id=obj.pk)

    def delete_queryset(self, request, queryset):
        for rule_id in queryset.order_by("pk").values_list("pk", flat=True):
            policy_rule_delete(rule_id=rule_id)

    @admin.action(description="Deactivate selected rules (kept, no longer enforced)", permissions=["change"])
    def deactivate_rules(self, request, queryset):
        ids = list(queryset.filter(is_active=True).order_by("pk").values_list("pk", flat=True))
        for rule_id in ids:
            policy_rule_deactivate(rule_id=rule_id)
        self.message_user(request, f"Deactivated {len(ids)} rule(s).", messages.SUCCESS)

    @admin.action(description="Activate selected rules", permissions=["change"])
    def activate_rules(self, request, queryset):
        ids = list(queryset.filter(is_active=False).order_by("pk").values_list("pk", flat=True))
        for rule_id in ids:
            policy_rule_activate(rule_id=rule_id)
        self.message_user(request, f"Activated {len(ids)} rule(s).", messages.SUCCESS)


class _ScopedRuleInlineForm(PolicyRuleForm):
    fixed_scope: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.scope = self.fixed_scope


class PlanRuleInlineForm(_ScopedRuleInlineForm):
    fixed_scope = PolicyRule.Scope.PLAN


class TenantRuleInlineForm(_ScopedRuleInlineForm):
    fixed_scope = PolicyRule.Scope.TENANT


class UserRuleInlineForm(_ScopedRuleInlineForm):
    fixed_scope = PolicyRule.Scope.USER


class PolicyRuleInlineFormSet(BaseInlineFormSet):
    """The rule inlines save and delete through the policy-rule service (validated, audited, caches dropped)."""

    def save_new(self, form, commit=True):
        setattr(form.instance, self.fk.name, self.instance)  # the parent row exists by now
        return policy_rule_save(rule=form.instance) if commit else form.instance

    def save_existing(self, form, obj, commit=True):
        return policy_rule_save(rule=form.instance) if commit else form.instance

    def delete_existing(self, obj, commit=True):
        if commit:
            policy_rule_delete(rule_id=obj.pk)


class _PolicyRuleInline(admin.TabularInline):
    model = PolicyRule
    formset = PolicyRuleInlineFormSet
    fields = ["task", "key", "value", "when_quota_key", "when_usage_percent_gte", "is_active", "note", "window",
              "seeded"]
    readonly_fields = ["window", "seeded"]
    extra = 0
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("task")

    @admin.display(description="time window")
    def window(self, obj: PolicyRule) -> str:
        return _window(obj) if obj.pk else "-"


class PlanPolicyRuleInline(_PolicyRuleInline):
    form = PlanRuleInlineForm
    fk_name = "plan"
    verbose_name = "default rule"
    verbose_name_plural = "default rules of this plan (tenant and user overrides beat them)"


class TenantPolicyRuleInline(_PolicyRuleInline):
    form = TenantRuleInlineForm
    fk_name = "tenant"
    verbose_name = "override"
    verbose_name_plural = "tenant overrides (beat the plan's rules; user overrides beat these)"


class UserPolicyRuleInline(_PolicyRuleInline):
    form = UserRuleInlineForm
    fk_name = "user"
    verbose_name = "override"
    verbose_name_plural = "user overrides (the most specific rules)"


def admin_inlines_add(owner: type[admin.ModelAdmin], *inlines: type) -> None:
    """Show rows of this app on a lower app's admin page: the owning admin's `inlines` grows by these
    (ModelAdmin reads `inlines` per request). The owner stays the model's one registered admin."""
    owner.inlines = [*owner.inlines, *(inline for inline in inlines if inline not in owner.inlines)]


admin_inlines_add(PlanAdmin, PlanPolicyRuleInline)
admin_inlines_add(TenantAdmin, TenantPolicyRuleInline)
admin_inlines_add(UserAdmin, UserPolicyRuleInline)


# ------------------------------------------------------------------------------------ read-only helpers


class ReadOnlyAdminMixin:
    """Rows written only by the gateway: visible to staff, never added, edited or deleted here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# ------------------------------------------------------------------------------------------ meters


@admin.register(UsageMeter)
class UsageMeterAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "tenant", "user", "task", "metric", "window", "period_start", "used_display",
                    "reserved_display", "updated_at"]
    list_filter = ["metric", "window", "task"]
    list_select_related = ["tenant", "user", "task"]
    search_fields = ["=tenant__slug", "=user__username"]
    search_help_text = "Exact tenant slug or username."
    date_hierarchy = "period_start"
    ordering = ["-period_start", "tenant_id", "metric"]
    show_full_result_count = False

    @admin.display(description="used", ordering="used")
    def used_display(self, obj: UsageMeter) -> str:
        return format_micro_usd(obj.used) if obj.metric == "COST" else f"{obj.used:,}"

    @admin.display(description="reserved", ordering="reserved")
    def reserved_display(self, obj: UsageMeter) -> str:
        return format_micro_usd(obj.reserved) if obj.metric == "COST" else f"{obj.reserved:,}"


# ------------------------------------------------------------------------------------ reservations


class UsageHoldInline(admin.TabularInline):
    model = UsageHold
    extra = 0
    can_delete = False
    verbose_name_plural = "holds (budget this reservation keeps on each meter)"

    def get_fields(self, request, obj=None):
        return [f.name for f in UsageHold._meta.concrete_fields if f.name not in ("id", "reservation")] + [
            "meter_now"
        ]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("meter", "meter__tenant", "meter__user", "meter__task")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="meter now (used / reserved)")
    def meter_now(self, obj: UsageHold) -> str:
        return f"{obj.meter.used:,} / {obj.meter.reserved:,}"


class StuckFilter(admin.SimpleListFilter):
    title = "lease"
    parameter_name = "lease"

    def lookups(self, request, model_admin):
        return [("stuck", "Active but lease expired (stuck)"), ("live", "Active and renewing")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "stuck":
            return queryset.filter(status=UsageReservation.Status.ACTIVE, expires_at__lte=now)
        if self.value() == "live":
            return queryset.filter(status=UsageReservation.Status.ACTIVE, expires_at__gt=now)
        return queryset


@admin.register(UsageReservation)
class UsageReservationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["request_id", "tenant", "user", "task", "status", "lease", "enforcement_mode", "created_at",
                    "expires_at", "settled_at"]
    list_filter = ["status", StuckFilter, "enforcement_mode", "task"]
    list_select_related = ["tenant", "user", "task"]
    search_fields = ["=request_id", "=tenant__slug", "=user__username", "=idempotency_key"]
    search_help_text = "Exact request id, tenant slug, username or idempotency key."
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    inlines = [UsageHoldInline]
    actions = ["release_reservations"]
    show_full_result_count = False

    @admin.display(description="lease")
    def lease(self, obj: UsageReservation):
        if obj.status != UsageReservation.Status.ACTIVE:
            return "-"
        if obj.expires_at <= timezone.now():
            return format_html('<strong style="color:#ba2121">{}</strong>', "stuck (expired)")
        return "renewing"

    def has_release_permission(self, request) -> bool:
        return request.user.has_perm("metering.change_usagereservation")

    @admin.action(description="Release stuck reservation (free its holds)", permissions=["release"])
    def release_reservations(self, request, queryset):
        active = list(queryset.filter(status=UsageReservation.Status.ACTIVE).values_list("pk", "request_id"))
        skipped = queryset.count() - len(active)
        released = []
        for reservation_id, request_id in active:
            try:
                reservation_release(reservation_id=reservation_id, reason="admin")
            except Exception as exc:  # one failure must not hide the others' results
                self.message_user(request, f"{request_id}: not released ({exc}).", messages.ERROR)
            else:
                released.append(request_id)
        if released:
            self.message_user(request, f"Released {len(released)} reservation(s): {', '.join(released)}.",
                              messages.SUCCESS)
        if skipped:
            self.message_user(request, f"Skipped {skipped} reservation(s) that are not active.", messages.INFO)


# ------------------------------------------------------------------------------------------- ledger


class ProviderFilter(admin.SimpleListFilter):
    """Fixed choices: a DISTINCT over the ledger would scan it."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request, model_admin):
        from catalog.models import ProviderModel

        return ProviderModel.Provider.choices

    def queryset(self, request, queryset):
        return queryset.filter(provider=self.value()) if self.value() else queryset


@admin.register(UsageLog)
class UsageLogAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["admitted_at", "request_id", "tenant", "user", "task", "status", "model", "tokens_in",
                    "tokens_out", "api_calls", "cost", "latency_ms", "enforcement_mode", "would_refuse_code"]
    list_filter = ["status", "task", ProviderFilter, "enforcement_mode", "usage_estimated"]
    list_select_related = ["tenant", "user", "task"]
    search_fields = ["=request_id", "=tenant__slug", "=user__username"]
    search_help_text = "Exact request id, tenant slug or username."
    date_hierarchy = "admitted_at"
    ordering = ["-admitted_at"]
    # The ledger grows forever: no COUNT(*) over the whole table on each page.
    show_full_result_count = False

    @admin.display(description="model")
    def model(self, obj: UsageLog) -> str:
        if not obj.model_name:
            return "-"
        return f"{obj.provider}:{obj.model_name} ({obj.model_class})" if obj.model_class else obj.model_name

    @admin.display(description="cost", ordering="cost_micro_usd")
    def cost(self, obj: UsageLog) -> str:
        return format_micro_usd(obj.cost_micro_usd)


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["day", "tenant", "user", "task", "model_name", "requests", "refused", "tokens_in", "tokens_out",
                    "api_calls", "cost_micro_usd"]
    list_filter = ["task"]
    list_select_related = ["tenant", "user", "task"]
    search_fields = ["=tenant__slug", "=user__username"]
    date_hierarchy = "day"
    ordering = ["-day"]
    show_full_result_count = False


# The alert slice's admins (quota alerts, notifications, channels, deliveries, digests).
import metering.alerts.admin  # noqa: E402,F401


# Models added to this app later (e.g. alert channels) are still reachable by a super admin until
# they get an admin of their own above. Holds are shown on their reservation.
class MeteringRowAdmin(admin.ModelAdmin):
    """The plain admin of a metering model that has none of its own yet."""


for _model in apps.get_app_config("metering").get_models():
    if _model is not UsageHold and not admin.site.is_registered(_model):
        admin.site.register(_model, MeteringRowAdmin)
