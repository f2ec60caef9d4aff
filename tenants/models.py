"""Who buys: tenants, their users, and the ATI tokens that carry each tenant's plan."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from django.contrib.auth.models import AbstractUser
from django.db import models, router, transaction
from django.db.models import Q
from django.utils import timezone


class EnforcementMode(models.TextChoices):
    SHADOW = "SHADOW", "Shadow (record, never block)"
    SOFT = "SOFT", "Soft (block only per-request safety limits)"
    HARD = "HARD", "Hard (block)"


class ATIToken(models.Model):
    """A plan entitlement issued by a super admin; `plan_tier` is the tenant's plan, nowhere else."""

    class Status(models.TextChoices):
        ACTIVE = "ACTIVE", "Active"
        REVOKED = "REVOKED", "Revoked"

    id = models.CharField(primary_key=True, max_length=40, editable=False, verbose_name="ATI id")
    plan_tier = models.CharField(max_length=32, help_text="A Plan.code.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField(null=True, blank=True)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    tenant = models.ForeignKey(
        "Tenant", null=True, blank=True, on_delete=models.PROTECT, related_name="ati_tokens",
        help_text="The tenant this token was used for.",
    )
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "ATI token"
        indexes = [models.Index(fields=["status", "plan_tier"], name="ati_status_plan")]

    def __str__(self) -> str:
        return self.id

    @staticmethod
    def hash_secret(secret: str) -> str:
        # The secret carries 256 random bits, so a plain SHA-256 is not brute-forceable
        # and allows an indexed lookup (a salted slow hash would need a scan).
        return hashlib.sha256(secret.encode()).hexdigest()

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def is_usable(self, now=None) -> bool:
        return self.status == self.Status.ACTIVE and not self.is_expired(now)


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "ACTIVE", "Active"
        SUSPENDED = "SUSPENDED", "Suspended"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    signup_ati_token = models.OneToOneField(
        ATIToken, on_delete=models.PROTECT, related_name="signup_tenant",
        help_text="The ATI token whose plan_tier is this tenant's plan.",
    )
    enforcement_mode = models.CharField(
        max_length=8, choices=EnforcementMode.choices, null=True, blank=True,
        help_text="Empty = inherit GATEWAY_ENFORCEMENT_MODE.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["status"], name="tenant_status")]

    def __str__(self) -> str:
        return self.slug

    @property
    def plan_code(self) -> str:
        return self.signup_ati_token.plan_tier


class User(AbstractUser):
    class Role(models.TextChoices):
        ADMIN = "ADMIN", "Tenant admin"
        MEMBER = "MEMBER", "Member"
        # The account a tenant's service keys act as when a request names no user (one per tenant,
        # no password: it cannot sign in). Limits and the ledger see it as one more user.
        SERVICE = "SERVICE", "Service account"

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="users")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)
    # Every JWT carries the value this had when it was issued (claim "sv"); a token whose value is
    # no longer the user's is refused. Empty until the first change (so tokens issued before this
    # field existed, which carry none, stay valid until then); random, so a save from a stale copy
    # of the user still ends every session issued before it.
    session_version = models.CharField(
        max_length=32, blank=True, default="", editable=False,
        help_text="Changes on a password change, a deactivation or 'sign out everywhere'.",
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        constraints = [
            # Super admins have no tenant; every other user belongs to exactly one.
            models.CheckConstraint(
                condition=Q(tenant__isnull=False) | Q(is_superuser=True) | Q(is_staff=True),
                name="user_tenant_or_staff",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "role"], name="user_tenant_role")]

    @property
    def is_tenant_admin(self) -> bool:
        return self.tenant_id is not None and self.role == self.Role.ADMIN

    def sessions_end(self) -> None:
        """Once saved, every access and refresh token issued before is refused (in every process,
        on its next request: the user's save invalidates the cached identities of the tenant)."""
        self.session_version = secrets.token_hex(8)

    def set_unusable_password(self) -> None:
        super().set_unusable_password()
        self._sessions_end_on_save = True

    def _ends_sessions(self, update_fields: Iterable[str] | None, using: str | None) -> bool:
        """A password change (Django's own notion: `set_password` -- by the user, a tenant admin, the
        admin site or `changepassword` -- not a hash upgrade at login) or a deactivation."""
        def saves(name: str) -> bool:
            return update_fields is None or name in update_fields

        if saves("password") and (self._password is not None or getattr(self, "_sessions_end_on_save", False)):
            return True
        if self.is_active or not saves("is_active"):
            return False
        using = using or router.db_for_write(type(self), instance=self)
        return type(self)._default_manager.using(using).filter(pk=self.pk, is_active=True).exists()

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            update_fields = kwargs.get("update_fields")
            if self._ends_sessions(update_fields, kwargs.get("using")):
                self.sessions_end()
                if update_fields is not None:
                    kwargs["update_fields"] = {*update_fields, "session_version"}
                # Ending sessions is this row's own rule, whoever saves it (Django's changepassword and
                # password pages included): the identities cached with the old session version go in
                # every process once this commits. Other changes are the services' to announce.
                if self.tenant_id is not None:
                    from tenants.selectors import identity_cache_invalidate

                    tenant_id = self.tenant_id
                    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant_id),
                                          using=kwargs.get("using"))
        self._sessions_end_on_save = False
        super().save(*args, **kwargs)


# The roles people are given (the service account is made by the key services only).
PERSON_ROLES = (User.Role.ADMIN.value, User.Role.MEMBER.value)

API_KEY_PREFIX = "gw_live_"


class ApiKey(models.Model):
    """A long-lived credential of a tenant: a user key acts as its user, a service key (no user) as the
    tenant's service, which may name the acting user per request (X-Gateway-User).

    The secret is shown once; only its SHA-256 is kept (it carries 256 random bits, so a plain hash
    cannot be brute-forced and allows an indexed lookup, as for ATI tokens). `public_id` is the part
    of the key after the prefix that finds the row; the prefix lets logs and secret scanners spot keys.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(
        "User", null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys",
        help_text="Empty = a service key (acts as the tenant's service, may name the acting user).",
    )
    name = models.CharField(max_length=100)
    public_id = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    allowed_tasks = models.JSONField(default=list, blank=True, help_text="Task codes; empty = every task.")
    allowed_model_classes = models.JSONField(
        default=list, blank=True, help_text="Model class codes; empty = every class the plan allows.")
    limits = models.JSONField(
        default=dict, blank=True,
        help_text='The key\'s own budget, on top of every other limit: {"key_tokens_per_day": 100000, '
                  '"key_cost_per_month_usd": "25"} (keys of the policy registry with subject KEY).')
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False,
                                        help_text="Updated when the key's identity is (re)resolved, not per call.")
    created_by = models.ForeignKey("User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"
        indexes = [models.Index(fields=["tenant", "created_at"], name="apikey_tenant_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def prefix(self) -> str:
        return API_KEY_PREFIX + self.public_id

    @property
    def is_service(self) -> bool:
        return self.user_id is None

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.is_expired() else "active"


# The audit log's model is defined with its service in tenants/audit.py; imported here so the app registers it.
from tenants.audit import AuditEvent  # noqa: E402,F401
