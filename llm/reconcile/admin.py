"""Django Admin: organisation admin keys (write-only, encrypted at rest) and the reconciliation runs
(read-only: the command records them). Registered from llm/admin.py."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from llm.reconcile.models import ProviderAdminCredential, ProviderReconciliation, ProviderReconciliationRow
from llm.reconcile.services import ADMIN_KEY_SETTINGS


class ProviderAdminCredentialForm(forms.ModelForm):
    admin_key = forms.CharField(
        label="Admin key", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The organisation's admin key (OpenAI Admin key, Anthropic Admin API key). Stored encrypted; "
                  "it cannot be shown again after saving.",
    )

    class Meta:
        model = ProviderAdminCredential
        fields = ["provider", "label", "admin_key", "is_active"]

    def clean(self):
        cleaned = super().clean()
        keeps_key = self.instance.pk is not None and bool(self.instance.encrypted_admin_key)
        if not cleaned.get("admin_key") and (not keeps_key or "provider" in self.changed_data):
            self.add_error("admin_key", "Enter the admin key.")
        return cleaned

    def save(self, commit=True):
        if self.cleaned_data.get("admin_key"):
            self.instance.set_admin_key(self.cleaned_data["admin_key"])
        return super().save(commit=commit)


class ProviderAdminCredentialAdmin(admin.ModelAdmin):
    form = ProviderAdminCredentialForm
    list_display = ["provider", "label", "is_active", "key", "in_use", "updated_at"]
    list_filter = ["provider", "is_active"]
    readonly_fields = ["key", "in_use", "created_at", "updated_at"]

    @method_decorator(sensitive_post_parameters("admin_key"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="key")
    def key(self, obj: ProviderAdminCredential) -> str:
        return obj.key_hint if obj.pk else "-"

    @admin.display(description="in use")
    def in_use(self, obj: ProviderAdminCredential) -> str:
        from django.conf import settings

        if not obj.pk or not obj.is_active:
            return "no" if obj.pk else "-"
        setting = ADMIN_KEY_SETTINGS.get(obj.provider, "")
        if setting and getattr(settings, setting, ""):
            return f"no: {setting} in the environment takes precedence"
        return "yes"


class ReconciliationRowInline(admin.TabularInline):
    model = ProviderReconciliationRow
    extra = 0
    can_delete = False
    fields = ["day", "model_name", "drifted", "ledger_requests", "provider_requests", "ledger_tokens_in",
              "provider_tokens_in", "ledger_tokens_out", "provider_tokens_out", "ledger_cost_micro_usd",
              "provider_cost_micro_usd"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ProviderReconciliationAdmin(admin.ModelAdmin):
    list_display = ["started_at", "provider", "day_from", "day_to", "status", "rows_drifted", "rows_total",
                    "alerted_at"]
    list_filter = ["provider", "status"]
    inlines = [ReconciliationRowInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


admin.site.register(ProviderAdminCredential, ProviderAdminCredentialAdmin)
admin.site.register(ProviderReconciliation, ProviderReconciliationAdmin)
