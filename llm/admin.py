"""Django Admin for provider credentials: write-only keys, encrypted at rest, never shown again.

The form's `api_key` field is a password input that never renders a value; the change page and
the list show only the key's last four characters. Every write bumps the registry's credential
generation on commit, so every process rebuilds its provider clients within a second.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from catalog.models import ProviderModel
from llm.crypto import CredentialDecryptionError, reencrypt
from llm.models import ProviderCredential
from llm.providers.registry import ENV_SETTINGS, KEYLESS_PROVIDERS, provider_credentials_invalidate
from tenants.audit import audit_record, changed_fields


def provider_credentials_invalidate_on_commit() -> None:
    transaction.on_commit(provider_credentials_invalidate)


class ProviderCredentialForm(forms.ModelForm):
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted; it cannot be shown again after saving.",
    )

    class Meta:
        model = ProviderCredential
        fields = ["provider", "label", "api_key", "base_url", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider"].choices = [
            choice for choice in self.fields["provider"].choices if choice[0] != ProviderModel.Provider.OFFLINE
        ]
        if self.instance.pk and self.instance.has_key:
            self.fields["api_key"].help_text = (
                f"Current key: {self.instance.key_hint}. Leave blank to keep the current key; "
                "type a new one to replace it. Stored encrypted; it cannot be shown again."
            )

    def clean(self):
        cleaned = super().clean()
        provider = cleaned.get("provider")
        api_key = cleaned.get("api_key", "")
        keeps_key = self.instance.pk is not None and self.instance.has_key
        if provider and provider not in KEYLESS_PROVIDERS and not api_key:
            if not keeps_key:
                self.add_error("api_key", "This provider needs an API key.")
            elif "provider" in self.changed_data:
                self.add_error("api_key", "Enter the key for the new provider (the stored key is for another one).")
        return cleaned

    def save(self, commit=True):
        api_key = self.cleaned_data.get("api_key")
        if api_key:
            self.instance.set_api_key(api_key)
        return super().save(commit=commit)


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(admin.ModelAdmin):
    form = ProviderCredentialForm
    list_display = ["provider", "label", "is_active", "base_url", "key", "status", "updated_at"]
    list_filter = ["provider", "is_active"]
    search_fields = ["label", "provider", "base_url"]
    readonly_fields = ["key", "status", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["provider", "label", "is_active"]}),
        ("Key", {"fields": ["key", "api_key", "base_url"]}),
        ("Status", {"fields": ["status", "created_at", "updated_at"]}),
    ]
    actions = ["reencrypt_with_newest_key"]

    @method_decorator(sensitive_post_parameters("api_key"))  # never in error reports
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    @admin.display(description="key")
    def key(self, obj: ProviderCredential) -> str:
        return obj.key_hint if obj.pk else "-"

    @admin.display(description="in use")
    def status(self, obj: ProviderCredential) -> str:
        if not obj.pk:
            return "-"
        if not obj.is_active:
            return "inactive"
        key_setting, url_setting = ENV_SETTINGS.get(obj.provider, ("", ""))
        overriding = url_setting if obj.provider in KEYLESS_PROVIDERS else key_setting
        if overriding and getattr(settings, overriding, ""):
            return f"no: {overriding} in the environment takes precedence"
        return "yes"

    # Audited here (the admin site's audit_context names the staff user): never the key itself, only
    # its last characters' hint, so a replaced key shows as a changed hint.
    @staticmethod
    def _audit_snapshot(obj: ProviderCredential) -> dict:
        return {"provider": obj.provider, "label": obj.label, "base_url": obj.base_url, "is_active": obj.is_active,
                "key": obj.key_hint if obj.has_key else ""}

    def save_model(self, request, obj, form, change):
        stored = ProviderCredential.objects.filter(pk=obj.pk).first() if change else None
        before = self._audit_snapshot(stored) if stored is not None else None
        super().save_model(request, obj, form, change)
        after = self._audit_snapshot(obj)
        if before is not None:
            before, after = changed_fields(before, after)
        if before is None or after:
            audit_record(action=f"provider_credential.{'update' if change else 'create'}",
                         object_type="provider_credential", object_id=obj.pk, before=before, after=after)
        provider_credentials_invalidate_on_commit()

    def delete_model(self, request, obj):
        pk, before = obj.pk, self._audit_snapshot(obj)
        super().delete_model(request, obj)
        audit_record(action="provider_credential.delete", object_type="provider_credential", object_id=pk,
                     before=before)
        provider_credentials_invalidate_on_commit()

    def delete_queryset(self, request, queryset):
        gone = [(obj.pk, self._audit_snapshot(obj)) for obj in queryset]
        super().delete_queryset(request, queryset)
        for pk, before in gone:
            audit_record(action="provider_credential.delete", object_type="provider_credential", object_id=pk,
                         before=before)
        provider_credentials_invalidate_on_commit()

    @admin.action(description="Re-encrypt with the newest key (after adding a key to CREDENTIALS_ENCRYPTION_KEY)")
    def reencrypt_with_newest_key(self, request, queryset):
        done, failed = 0, []
        for credential in queryset.exclude(encrypted_api_key=""):
            try:
                credential.encrypted_api_key = reencrypt(credential.encrypted_api_key)
            except CredentialDecryptionError:
                failed.append(str(credential))
                continue
            credential.save(update_fields=["encrypted_api_key", "updated_at"])
            done += 1
        provider_credentials_invalidate_on_commit()
        self.message_user(request, f"Re-encrypted {done} credential(s) with the newest key.", messages.SUCCESS)
        if failed:
            self.message_user(
                request, "Not decryptable with any configured key (enter the key again): " + ", ".join(failed),
                messages.ERROR,
            )


import llm.reconcile.admin  # noqa: E402,F401  (admin keys and reconciliation runs)
