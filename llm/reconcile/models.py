"""What a reconciliation run recorded, and the admin keys it reads the providers' books with.

Defined here and imported by llm/models.py, so they belong to the `llm` app (tables `llm_*`).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from llm import crypto

# The figures compared per day and model, in display order. `requests` is calls, the token fields
# count tokens as the ledger does (tokens_in = the whole prompt, cached and cache-write included),
# cost is integer micro-USD.
METRICS = ("requests", "tokens_in", "tokens_cached_in", "tokens_cache_write", "tokens_out", "cost_micro_usd")

LAST_FOUR_MIN_KEY_LENGTH = 16


class ProviderAdminCredential(models.Model):
    """An organisation admin key (OpenAI Admin key, Anthropic Admin API key), encrypted at rest.

    Kept apart from ProviderCredential: an admin key can read the organisation's billing and manage
    its keys, so it is never handed to the metered path, and a model call never needs it."""

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"

    provider = models.CharField(max_length=32, choices=Provider.choices)
    label = models.CharField(max_length=100, help_text="What this key is, e.g. 'org admin key, read-only'.")
    encrypted_admin_key = models.TextField(blank=True, editable=False)
    last_four = models.CharField(max_length=4, blank=True, editable=False)
    is_active = models.BooleanField(default=True, help_text="One active admin key per provider.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "-is_active", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider"], condition=Q(is_active=True), name="uniq_active_admin_credential_per_provider",
                violation_error_message="This provider already has an active admin key: deactivate it first.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} admin: {self.label}"

    @property
    def key_hint(self) -> str:
        if not self.encrypted_admin_key:
            return "(no key)"
        return f"…{self.last_four}" if self.last_four else "(set)"

    def set_admin_key(self, plaintext: str) -> None:
        self.encrypted_admin_key = crypto.encrypt(plaintext)
        self.last_four = plaintext[-4:] if len(plaintext) >= LAST_FOUR_MIN_KEY_LENGTH else ""

    def admin_key(self) -> str:
        """The decrypted key ("" when none). Raises crypto.CredentialDecryptionError."""
        return crypto.decrypt(self.encrypted_admin_key) if self.encrypted_admin_key else ""


class ProviderReconciliation(models.Model):
    """One run of `reconcile_provider_usage`: the provider's own usage report against the ledger's
    daily rollup, for a range of UTC days."""

    class Status(models.TextChoices):
        OK = "OK", "no drift"
        DRIFT = "DRIFT", "drift over the threshold"
        FAILED = "FAILED", "could not read the provider's report"

    provider = models.CharField(max_length=32)
    day_from = models.DateField()
    day_to = models.DateField()
    status = models.CharField(max_length=8, choices=Status.choices)
    message = models.TextField(blank=True, help_text="Why a run failed (provider text scrubbed of credentials).")
    rows_total = models.PositiveIntegerField(default=0)
    rows_drifted = models.PositiveIntegerField(default=0)
    totals = models.JSONField(default=dict, blank=True, help_text="Per metric: ledger and provider sums.")
    thresholds = models.JSONField(default=dict, blank=True, help_text="The drift thresholds this run applied.")
    not_reported = models.JSONField(default=list, blank=True,
                                    help_text="Metrics the provider's report does not carry (not compared).")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    alerted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["provider", "-started_at"], name="reconcile_provider_recent")]

    def __str__(self) -> str:
        return f"{self.provider} {self.day_from}..{self.day_to} {self.status}"


class ProviderReconciliationRow(models.Model):
    """One day and model of a run: what the ledger holds, what the provider billed (null: the
    provider's report does not carry that figure), and which figures drifted."""

    run = models.ForeignKey(ProviderReconciliation, on_delete=models.CASCADE, related_name="rows")
    day = models.DateField()
    model_name = models.CharField(max_length=128, help_text="The catalog's name (the provider's, if unknown).")
    provider_model_names = models.JSONField(default=list, blank=True,
                                            help_text="The names the provider reported (e.g. dated snapshots).")
    ledger_requests = models.BigIntegerField(default=0)
    provider_requests = models.BigIntegerField(null=True, blank=True)
    ledger_tokens_in = models.BigIntegerField(default=0)
    provider_tokens_in = models.BigIntegerField(null=True, blank=True)
    ledger_tokens_cached_in = models.BigIntegerField(default=0)
    provider_tokens_cached_in = models.BigIntegerField(null=True, blank=True)
    ledger_tokens_cache_write = models.BigIntegerField(default=0)
    provider_tokens_cache_write = models.BigIntegerField(null=True, blank=True)
    ledger_tokens_out = models.BigIntegerField(default=0)
    provider_tokens_out = models.BigIntegerField(null=True, blank=True)
    ledger_cost_micro_usd = models.BigIntegerField(default=0)
    provider_cost_micro_usd = models.BigIntegerField(null=True, blank=True)
    drifted = models.JSONField(default=list, blank=True, help_text="The metrics over the threshold.")

    class Meta:
        ordering = ["day", "model_name"]
        constraints = [models.UniqueConstraint(fields=["run", "day", "model_name"], name="uniq_reconcile_row")]

    def __str__(self) -> str:
        return f"{self.day} {self.model_name}"

    @property
    def figures(self) -> list[dict]:
        """Per metric: ledger, provider, difference (provider − ledger), drifted."""
        out = []
        for metric in METRICS:
            ledger, provider = getattr(self, f"ledger_{metric}"), getattr(self, f"provider_{metric}")
            out.append({"metric": metric, "ledger": ledger, "provider": provider,
                        "diff": None if provider is None else provider - ledger, "drifted": metric in self.drifted})
        return out
