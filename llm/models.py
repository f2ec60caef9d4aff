"""Provider credentials managed in the admin, encrypted at rest (llm.crypto).

The plaintext key is never stored: only its Fernet token and, for recognition, its last four
characters (for keys long enough that four characters give nothing useful away).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from catalog.models import ProviderModel
from llm import crypto

LAST_FOUR_MIN_KEY_LENGTH = 16  # shorter keys show no characters at all


def validate_base_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValidationError("Enter an http:// or https:// URL, e.g. http://localhost:11434/v1.")
    if parts.username or parts.password:
        raise ValidationError("Put the key in the API key field, not in the URL.")


class ProviderCredential(models.Model):
    provider = models.CharField(max_length=32, choices=ProviderModel.Provider.choices)
    label = models.CharField(max_length=100, help_text="What this key is, e.g. 'production org key'.")
    encrypted_api_key = models.TextField(blank=True, editable=False)
    last_four = models.CharField(max_length=4, blank=True, editable=False)
    base_url = models.CharField(
        max_length=500, blank=True, validators=[validate_base_url],
        help_text="Optional override of the provider's API base URL (required for an OpenAI-compatible server).",
    )
    is_active = models.BooleanField(default=True, help_text="One active credential per provider.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "-is_active", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider"], condition=Q(is_active=True), name="uniq_active_credential_per_provider",
                violation_error_message="This provider already has an active credential: deactivate it first.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}: {self.label}"

    @property
    def has_key(self) -> bool:
        return bool(self.encrypted_api_key)

    @property
    def key_hint(self) -> str:
        """What the admin shows instead of the key."""
        if not self.encrypted_api_key:
            return "(no key)"
        return f"…{self.last_four}" if self.last_four else "(set)"

    def set_api_key(self, plaintext: str) -> None:
        self.encrypted_api_key = crypto.encrypt(plaintext)
        self.last_four = plaintext[-4:] if len(plaintext) >= LAST_FOUR_MIN_KEY_LENGTH else ""

    def api_key(self) -> str:
        """The decrypted key ("" when none is stored). Raises crypto.CredentialDecryptionError."""
        return crypto.decrypt(self.encrypted_api_key) if self.encrypted_api_key else ""

    def clean(self) -> None:
        super().clean()
        if self.provider == ProviderModel.Provider.OFFLINE:
            raise ValidationError({"provider": "The offline provider needs no credential."})
        if self.provider == ProviderModel.Provider.OPENAI_COMPATIBLE and not self.base_url:
            raise ValidationError({"base_url": "An OpenAI-compatible server needs its base URL."})


# Provider-billing reconciliation (llm/reconcile/): its models live in the llm app.
from llm.reconcile.models import (  # noqa: E402,F401
    ProviderAdminCredential,
    ProviderReconciliation,
    ProviderReconciliationRow,
)
