"""The audit log: who changed which plan, rule, tenant, token, credential or enforcement mode, when,
from what to what -- whether the change came from the admin, the console, the API or a command.

It lives in `tenants` (the lowest app that knows users and tenants) so that every app above it can
record here; the console (`adminconsole`) only reads it.

Services take optional `actor` / `source` keywords. When a caller does not pass them, the values of
the innermost `audit_context(...)` apply (the admin site wraps every admin view in one:
adminconsole/sites.py), and outside any context
the change is attributed to no user with source COMMAND (operations commands, shells, beat tasks).
An event is written in the same transaction as the change it records: both commit, or neither.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class AuditSource(models.TextChoices):
    ADMIN = "ADMIN", "Django Admin"
    CONSOLE = "CONSOLE", "Console"
    API = "API", "API"
    COMMAND = "COMMAND", "Command / system"


class AuditEvent(models.Model):
    """One recorded change. Rows are only ever inserted."""

    Source = AuditSource

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Empty for a command or the system.",
    )
    actor_label = models.CharField(max_length=150, blank=True, help_text="The actor's username when it happened.")
    source = models.CharField(max_length=8, choices=AuditSource.choices)
    action = models.CharField(max_length=64, help_text="e.g. tenant.plan_change, policy_rule.update.")
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    before = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at"], name="audit_time"),
            models.Index(fields=["tenant", "created_at"], name="audit_tenant_time"),
            models.Index(fields=["source", "created_at"], name="audit_source_time"),
            models.Index(fields=["action", "created_at"], name="audit_action_time"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.source} {self.action} {self.object_type}#{self.object_id}"

    @property
    def changes(self) -> list[tuple[str, Any, Any]]:
        """(field, before, after) for every field either side names."""
        before, after = self.before or {}, self.after or {}
        names = list(dict.fromkeys([*before, *after]))
        return [(name, before.get(name), after.get(name)) for name in names]


_context: contextvars.ContextVar[tuple[Any, str] | None] = contextvars.ContextVar("audit_context", default=None)


@contextmanager
def audit_context(*, actor: Any, source: str) -> Iterator[None]:
    """Attribute every change recorded inside this block (without its own actor/source) to `actor`."""
    token = _context.set((actor, source))
    try:
        yield
    finally:
        _context.reset(token)


def _user_or_none(actor: Any) -> Any:
    if actor is None or not getattr(actor, "is_authenticated", False) or getattr(actor, "pk", None) is None:
        return None
    return actor


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[dict, dict]:
    """Only the fields that differ (for an update: from what to what)."""
    before, after = before or {}, after or {}
    keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys if k in before}, {k: after.get(k) for k in keys if k in after}


def audit_record(
    *,
    action: str,
    object_type: str,
    object_id: Any,
    tenant: Any = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    actor: Any = None,
    source: str | None = None,
) -> AuditEvent:
    """Write one audit event (inside the caller's transaction). `tenant` is a Tenant, its id, or None."""
    context = _context.get()
    if context is not None:
        actor = actor if actor is not None else context[0]
        source = source or context[1]
    actor = _user_or_none(actor)
    source = source or AuditSource.COMMAND
    if source not in AuditSource.values:
        raise ValueError(f"Unknown audit source {source!r}.")
    tenant_id = getattr(tenant, "pk", tenant)
    return AuditEvent.objects.create(
        actor=actor, actor_label=actor.get_username() if actor is not None else "", source=source, action=action,
        object_type=object_type, object_id=str(object_id), tenant_id=tenant_id, before=before, after=after,
    )


# ------------------------------------------------------------------------------- catalog edits
# The catalog sits below this app and may not import it: its admin reports each change through
# catalog.changes, and tenants/apps.py plugs these two recorders in.


def catalog_change_audit(*, action: str, object_type: str, object_id: Any, before: dict | None,
                         after: dict | None) -> None:
    """Record a catalog edit (model classes, provider models and prices, plans and their access)."""
    audit_record(action=action, object_type=object_type, object_id=object_id, before=before, after=after)


def plan_change_identities_drop(*, action: str, object_type: str, object_id: Any, before: dict | None,
                                after: dict | None) -> None:
    """A plan switched off or renamed is refused at identity resolution: its tenants' cached
    identities go once the change commits."""
    if object_type != "plan" or not action.endswith((".update", ".delete")):
        return
    if not ({"is_active", "code"} & set(before or {})):
        return
    from django.db import transaction

    from tenants.models import Tenant
    from tenants.selectors import identity_cache_invalidate

    codes = {c for c in ((before or {}).get("code"), (after or {}).get("code")) if c}
    if not codes:
        from catalog.models import Plan

        codes = set(Plan.objects.filter(pk=object_id).values_list("code", flat=True))
    for tenant_id in Tenant.objects.filter(signup_ati_token__plan_tier__in=codes).values_list("pk", flat=True):
        transaction.on_commit(lambda tenant_id=tenant_id: identity_cache_invalidate(tenant_id=tenant_id))


# -------------------------------------------------------------------------------------- sign-ins
# Sign-ins are not writes a service makes, so Django's auth signals are where they are seen: every
# staff sign-in (admin site, console, single sign-on) and every failed sign-in on a staff page, or
# naming a staff account anywhere. Never the password (Django hands the receivers cleansed credentials).


def _client(request: Any) -> dict[str, Any]:
    if request is None:
        return {}
    return {"ip": request.META.get("REMOTE_ADDR", ""), "path": getattr(request, "path", "")[:200]}


def _staff_page(request: Any) -> bool:
    path = getattr(request, "path", "") or ""
    return not path.startswith(("/api/", "/v1/"))


def _on_login(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    if user is None or not (user.is_staff or user.is_superuser):
        return
    audit_record(action="auth.login", object_type="user", object_id=user.pk, tenant=user.tenant_id,
                 after={"username": user.get_username(), "superuser": user.is_superuser, **_client(request)},
                 actor=user, source=AuditSource.ADMIN if _staff_page(request) else AuditSource.API)


def _on_login_failed(sender: Any, credentials: dict | None = None, request: Any = None, **kwargs: Any) -> None:
    from django.contrib.auth import get_user_model

    username = str((credentials or {}).get("username") or "")[:150]
    account = get_user_model()._default_manager.filter(username=username).first() if username else None
    staff_account = account is not None and (account.is_staff or account.is_superuser)
    if not (_staff_page(request) or staff_account):
        return  # a tenant user's mistyped API password: the API answers it, nothing to audit
    audit_record(action="auth.login_failed", object_type="user", object_id=account.pk if account else username[:64],
                 after={"username": username, "known_account": account is not None, **_client(request)},
                 source=AuditSource.ADMIN if _staff_page(request) else AuditSource.API)


def login_events_connect() -> None:
    from django.contrib.auth.signals import user_logged_in, user_login_failed

    user_logged_in.connect(_on_login, dispatch_uid="tenants.audit.login")
    user_login_failed.connect(_on_login_failed, dispatch_uid="tenants.audit.login_failed")
