"""The console's own data: tenant admins' requests for higher limits."""

from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from catalog.models import Task
from metering.models import PolicyRule
from tenants.models import Tenant


class QuotaRequest(models.Model):
    """A tenant admin asks for a higher (or different) limit; a super admin approves or denies it.
    Approval writes the TENANT rule through metering.services.policy_rule_set."""

    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        APPROVED = "APPROVED", "Approved"
        DENIED = "DENIED", "Denied"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="quota_requests")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    key = models.CharField(max_length=64, help_text="A key of the policy registry (metering.policy_keys).")
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                             help_text="Empty = all tasks together.")
    wanted_value = models.JSONField(encoder=DjangoJSONEncoder, help_text="Canonical value for the key.")
    reason = models.TextField(blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=500, blank=True, help_text="The decision's note, shown to the tenant.")
    rule = models.ForeignKey(PolicyRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                             help_text="The TENANT rule the approval created or updated.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="quotareq_status_time"),
            models.Index(fields=["tenant", "created_at"], name="quotareq_tenant_time"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.tenant_id} {self.key}={self.wanted_value} ({self.status})"


class SSOIdentity(models.Model):
    """The identity provider's account (issuer + subject) behind a staff user created by single sign-on.

    SSO users are found by this link, never by email: an address at the identity provider must not
    open an existing password account (a tenant user's least of all)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="ssoidentity_issuer_subject")]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"
