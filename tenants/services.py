"""Writes about who buys: ATI tokens, tenants (signup) and their users."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from catalog.models import Plan
from gateway_project.errors import BadRequest, Conflict, NotFound
from tenants.audit import AuditSource, audit_record, changed_fields
from tenants.models import API_KEY_PREFIX, PERSON_ROLES, ApiKey, ATIToken, EnforcementMode, Tenant, User
from tenants.selectors import identity_cache_invalidate

ATI_SECRET_PREFIX = "ati_secret_"


@dataclass(frozen=True)
class IssuedATIToken:
    token: ATIToken
    secret: str  # shown once, never stored


def _validate_password(password: str, user: User | None = None) -> None:
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise BadRequest(" ".join(exc.messages), code="weak_password") from None


@transaction.atomic
def ati_token_issue(
    *, plan_code: str, expires_days: int | None = None, note: str = "", actor: User | None = None,
    source: str | None = None,
) -> IssuedATIToken:
    if not Plan.objects.filter(code=plan_code).exists():
        known = ", ".join(Plan.objects.values_list("code", flat=True)) or "none (run seed_catalog)"
        raise BadRequest(f"Unknown plan '{plan_code}'. Known plans: {known}.", code="plan_unknown")
    if expires_days is not None and expires_days <= 0:
        raise BadRequest("expires_days must be a positive number of days.", code="invalid_expiry")
    secret = ATI_SECRET_PREFIX + secrets.token_urlsafe(32)
    token = ATIToken.objects.create(
        id="ati_" + secrets.token_hex(12),
        plan_tier=plan_code,
        secret_hash=ATIToken.hash_secret(secret),
        expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
        note=note,
    )
    audit_record(action="ati_token.issue", object_type="ati_token", object_id=token.pk, actor=actor, source=source,
                 after={"plan_tier": plan_code, "expires_at": token.expires_at, "note": note})
    return IssuedATIToken(token=token, secret=secret)


@transaction.atomic
def ati_token_revoke(*, ati_id: str, actor: User | None = None, source: str | None = None) -> ATIToken:
    token = ATIToken.objects.select_for_update().filter(pk=ati_id).first()
    if token is None:
        raise NotFound(f"No ATI token with id '{ati_id}'.", code="ati_token_unknown")
    before = token.status
    token.status = ATIToken.Status.REVOKED
    token.save(update_fields=["status"])
    audit_record(action="ati_token.revoke", object_type="ati_token", object_id=token.pk, tenant=token.tenant_id,
                 before={"status": before}, after={"status": token.status}, actor=actor, source=source)
    if token.tenant_id:
        transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=token.tenant_id))
    return token


def _unique_slug(name: str) -> str:
    base = slugify(name)[:60] or "tenant"
    slug, n = base, 2
    while Tenant.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def _check_username_free(username: str) -> None:
    if not username or len(username) > 150:
        raise BadRequest("A username of 1 to 150 characters is required.", code="invalid_username")
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(f"The username '{username}' is taken.", code="username_taken")


@transaction.atomic
def tenant_signup(
    *, ati_secret: str, tenant_name: str, username: str, email: str, password: str
) -> tuple[Tenant, User]:
    """Create a tenant and its first admin from an unused ATI token; the token's plan is the tenant's plan."""
    if not tenant_name.strip():
        raise BadRequest("tenant_name is required.", code="invalid_tenant_name")
    # Row lock: two signups racing with the same secret serialize here.
    token = ATIToken.objects.select_for_update().filter(secret_hash=ATIToken.hash_secret(ati_secret or "")).first()
    if token is None:
        raise BadRequest("Unknown ATI token.", code="ati_token_unknown")
    if token.status == ATIToken.Status.REVOKED:
        raise BadRequest("This ATI token has been revoked.", code="ati_token_revoked")
    if token.is_expired():
        raise BadRequest("This ATI token has expired.", code="ati_token_expired")
    if token.tenant_id is not None:
        raise BadRequest("This ATI token has already been used.", code="ati_token_used")
    if not Plan.objects.filter(code=token.plan_tier, is_active=True).exists():
        raise BadRequest(f"This ATI token's plan '{token.plan_tier}' is not available.", code="plan_unknown")
    _check_username_free(username)
    candidate = User(username=username, email=email)
    _validate_password(password, candidate)

    tenant = Tenant.objects.create(name=tenant_name.strip(), slug=_unique_slug(tenant_name), signup_ati_token=token)
    claimed = ATIToken.objects.filter(pk=token.pk, tenant__isnull=True).update(tenant=tenant, used_at=timezone.now())
    if claimed != 1:
        raise BadRequest("This ATI token has already been used.", code="ati_token_used")
    user = _user_create(tenant=tenant, username=username, email=email, password=password, role=User.Role.ADMIN)
    return tenant, user


def _user_create(*, tenant: Tenant, username: str, email: str, password: str, role: str, actor: User | None = None,
                 source: str | None = None) -> User:
    if role not in PERSON_ROLES:
        raise BadRequest(f"role must be one of {', '.join(PERSON_ROLES)}.", code="invalid_role")
    _check_username_free(username)
    user = User(username=username, email=email, tenant=tenant, role=role)
    _validate_password(password, user)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise Conflict(f"The username '{username}' is taken.", code="username_taken") from None
    audit_record(action="user.create", object_type="user", object_id=user.pk, tenant=tenant,
                 after=user_audit_snapshot(user), actor=actor, source=source)
    return user


@transaction.atomic
def user_create(*, tenant: Tenant, username: str, email: str, password: str, role: str = User.Role.MEMBER,
                actor: User | None = None, source: str | None = None) -> User:
    return _user_create(tenant=tenant, username=username, email=email, password=password, role=role, actor=actor,
                        source=source)


@transaction.atomic
def user_update(
    *,
    user: User,
    actor: User,
    email: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
    password: str | None = None,
    source: str | None = None,
) -> User:
    if role is not None and role not in PERSON_ROLES:
        raise BadRequest(f"role must be one of {', '.join(PERSON_ROLES)}.", code="invalid_role")
    losing_admin = (role is not None and role != User.Role.ADMIN) or is_active is False
    if losing_admin and user.role == User.Role.ADMIN:
        if user.pk == actor.pk:
            raise BadRequest("You cannot demote or deactivate yourself.", code="cannot_change_self")
        other_admins = User.objects.filter(tenant_id=user.tenant_id, role=User.Role.ADMIN, is_active=True).exclude(
            pk=user.pk
        )
        if not other_admins.exists():
            raise BadRequest("A tenant must keep at least one active admin.", code="last_admin")
    fields: list[str] = []
    if email is not None:
        user.email, fields = email, fields + ["email"]
    if role is not None:
        user.role, fields = role, fields + ["role"]
    if is_active is not None:
        user.is_active, fields = is_active, fields + ["is_active"]
    if password is not None:
        _validate_password(password, user)
        user.set_password(password)
        fields.append("password")
    if fields:
        before = user_audit_snapshot(User.objects.get(pk=user.pk))
        user.save(update_fields=fields)
        _user_audit(user, before, actor=actor, source=source, password_set=password is not None)
        transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=user.tenant_id))
    return user


def user_deactivate(*, user: User, actor: User, source: str | None = None) -> User:
    """Users are deactivated, not deleted: the ledger keeps pointing at who spent what. Their
    sessions end (a later reactivation does not bring the old tokens back)."""
    return user_update(user=user, actor=actor, is_active=False, source=source)


@transaction.atomic
def user_password_change(*, user: User, current_password: str, new_password: str) -> User:
    """The user's own change: needs the current password. Every earlier session ends (the save
    changes the session version); the caller hands out a fresh pair of tokens."""
    user = User.objects.select_for_update().get(pk=user.pk)
    if not user.check_password(current_password):
        raise BadRequest("The current password is wrong.", code="wrong_password")
    if new_password == current_password:
        raise BadRequest("The new password must differ from the current one.", code="password_unchanged")
    _validate_password(new_password, user)
    user.set_password(new_password)
    user.save(update_fields=["password"])
    audit_record(action="user.password_change", object_type="user", object_id=user.pk, tenant=user.tenant_id,
                 actor=user, source=AuditSource.API)
    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=user.tenant_id))
    return user


@transaction.atomic
def user_sessions_revoke(*, user: User, actor: User | None = None, source: str | None = None) -> User:
    """Sign out everywhere: every access and refresh token of the user is refused from the next request on."""
    user = User.objects.select_for_update().get(pk=user.pk)
    user.sessions_end()
    user.save(update_fields=["session_version"])
    audit_record(action="user.sessions_revoke", object_type="user", object_id=user.pk, tenant=user.tenant_id,
                 actor=actor, source=source)
    if user.tenant_id is not None:
        tenant_id = user.tenant_id
        transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant_id))
    return user


@transaction.atomic
def tenant_set_status(*, slug: str, status: str, actor: User | None = None, source: str | None = None) -> Tenant:
    tenant = Tenant.objects.select_for_update().filter(slug=slug).first()
    if tenant is None:
        raise NotFound(f"No tenant with slug '{slug}'.", code="tenant_unknown")
    before = tenant.status
    tenant.status = status
    tenant.save(update_fields=["status"])
    audit_record(action="tenant.status_change", object_type="tenant", object_id=tenant.pk, tenant=tenant,
                 before={"status": before}, after={"status": status}, actor=actor, source=source)
    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant.pk))
    return tenant


def tenant_suspend(*, slug: str, actor: User | None = None, source: str | None = None) -> Tenant:
    return tenant_set_status(slug=slug, status=Tenant.Status.SUSPENDED, actor=actor, source=source)


def tenant_activate(*, slug: str, actor: User | None = None, source: str | None = None) -> Tenant:
    return tenant_set_status(slug=slug, status=Tenant.Status.ACTIVE, actor=actor, source=source)


@transaction.atomic
def tenant_set_enforcement_mode(
    *, slug: str, mode: str | None, actor: User | None = None, source: str | None = None
) -> Tenant:
    """mode None = inherit the global GATEWAY_ENFORCEMENT_MODE."""
    if mode is not None and mode not in EnforcementMode.values:
        raise BadRequest(f"mode must be one of {', '.join(EnforcementMode.values)} or inherit.", code="invalid_mode")
    tenant = Tenant.objects.select_for_update().filter(slug=slug).first()
    if tenant is None:
        raise NotFound(f"No tenant with slug '{slug}'.", code="tenant_unknown")
    before = tenant.enforcement_mode
    tenant.enforcement_mode = mode
    tenant.save(update_fields=["enforcement_mode"])
    audit_record(action="tenant.enforcement_mode_change", object_type="tenant", object_id=tenant.pk, tenant=tenant,
                 before={"enforcement_mode": before}, after={"enforcement_mode": mode}, actor=actor, source=source)
    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant.pk))
    return tenant


@transaction.atomic
def ati_token_retier(*, ati_id: str, plan_code: str, actor: User | None = None, source: str | None = None) -> ATIToken:
    """Move the token's tenant to another plan (the token's plan_tier is the plan). Effective on the
    tenant's next call: its cached identities are dropped once this commits."""
    plan = Plan.objects.filter(code=plan_code).first()
    if plan is None:
        known = ", ".join(Plan.objects.values_list("code", flat=True)) or "none"
        raise BadRequest(f"Unknown plan '{plan_code}'. Known plans: {known}.", code="plan_unknown")
    if not plan.is_active:
        raise BadRequest(f"The plan '{plan_code}' is not active.", code="plan_inactive")
    token = ATIToken.objects.select_for_update().filter(pk=ati_id).first()
    if token is None:
        raise NotFound(f"No ATI token with id '{ati_id}'.", code="ati_token_unknown")
    if token.status != ATIToken.Status.ACTIVE:
        raise BadRequest("This ATI token is revoked; issue a new one instead.", code="ati_token_revoked")
    if token.plan_tier == plan_code:
        raise BadRequest(f"The token is already on plan {plan_code}.", code="plan_unchanged")
    before = token.plan_tier
    token.plan_tier = plan_code
    token.save(update_fields=["plan_tier"])
    audit_record(action="tenant.plan_change", object_type="ati_token", object_id=token.pk, tenant=token.tenant_id,
                 before={"plan_tier": before}, after={"plan_tier": plan_code}, actor=actor, source=source)
    if token.tenant_id:
        tenant_id = token.tenant_id
        transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant_id))
    return token


# --- API keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    secret: str  # the whole key, shown once, never stored


def _new_key_secret() -> tuple[str, str, str]:
    """(public id, full key, hash of its secret part)."""
    public_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return public_id, f"{API_KEY_PREFIX}{public_id}_{secret}", ApiKey.hash_secret(secret)


def _key_snapshot(key: ApiKey) -> dict:
    return {"name": key.name, "prefix": key.prefix, "user": key.user.username if key.user_id else None,
            "allowed_tasks": key.allowed_tasks, "allowed_model_classes": key.allowed_model_classes,
            "limits": key.limits, "expires_at": key.expires_at, "revoked_at": key.revoked_at}


def _service_account_ensure(tenant: Tenant) -> User:
    """The tenant's service account: the user a service key acts as when a request names none."""
    existing = User.objects.select_for_update().filter(tenant=tenant, role=User.Role.SERVICE).order_by("pk").first()
    if existing is not None:
        return existing
    base = f"{tenant.slug}.service"[:140]
    username, n = base, 2
    while User.objects.filter(username__iexact=username).exists():
        username, n = f"{base}-{n}", n + 1
    user = User(username=username, tenant=tenant, role=User.Role.SERVICE)
    user.set_unusable_password()
    user.save()
    return user


# Set by the metering app (its AppConfig.ready): validates a key's own budget against the policy
# registry, which lives above tenants (DESIGN §2). {name: value} in, canonical {name: value} out.
api_key_limits_validator: Callable[[dict], dict] | None = None


def _canonical_limits(limits: dict | None) -> dict:
    if not limits:
        return {}
    if not isinstance(limits, dict):
        raise BadRequest("limits is an object of API key budget keys.", code="invalid_api_key")
    if api_key_limits_validator is None:  # pragma: no cover - the metering app is always installed
        raise BadRequest("API key limits are not available.", code="invalid_api_key")
    try:
        return api_key_limits_validator(limits)
    except ValueError as error:
        raise BadRequest(str(error), code="invalid_api_key") from None


def _validate_key_limits(*, tenant: Tenant, allowed_tasks: list[str], allowed_model_classes: list[str]) -> None:
    from catalog.models import ModelClass, Task

    known = set(Task.objects.filter(code__in=allowed_tasks).values_list("code", flat=True))
    unknown = sorted(set(allowed_tasks) - known)
    if unknown:
        raise BadRequest(f"Unknown tasks: {', '.join(unknown)}.", code="invalid_api_key")
    unknown = sorted(set(allowed_model_classes)
                     - set(ModelClass.objects.filter(code__in=allowed_model_classes).values_list("code", flat=True)))
    if unknown:
        raise BadRequest(f"Unknown model classes: {', '.join(unknown)}.", code="invalid_api_key")


@transaction.atomic
def api_key_create(
    *, tenant: Tenant, name: str, user: User | None = None, allowed_tasks: list[str] | None = None,
    allowed_model_classes: list[str] | None = None, expires_at=None, limits: dict | None = None,
    actor: User | None = None, source: str | None = None,
) -> IssuedApiKey:
    """A user key (acts as `user`) or, with no user, a service key. The key is in the answer only."""
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise BadRequest("A key name of 1 to 100 characters is required.", code="invalid_api_key")
    if user is not None and (user.tenant_id != tenant.pk or not user.is_active or user.role == User.Role.SERVICE):
        raise BadRequest("A user key needs an active user of the same tenant.", code="invalid_api_key")
    if expires_at is not None and expires_at <= timezone.now():
        raise BadRequest("expires_at must be in the future.", code="invalid_api_key")
    allowed_tasks, allowed_model_classes = list(allowed_tasks or []), list(allowed_model_classes or [])
    _validate_key_limits(tenant=tenant, allowed_tasks=allowed_tasks, allowed_model_classes=allowed_model_classes)
    limits = _canonical_limits(limits)
    if user is None:
        _service_account_ensure(tenant)
    public_id, secret, secret_hash = _new_key_secret()
    key = ApiKey.objects.create(
        tenant=tenant, user=user, name=name, public_id=public_id, secret_hash=secret_hash,
        allowed_tasks=allowed_tasks, allowed_model_classes=allowed_model_classes, expires_at=expires_at,
        limits=limits, created_by=actor if getattr(actor, "pk", None) else None,
    )
    audit_record(action="api_key.create", object_type="api_key", object_id=key.pk, tenant=tenant,
                 after=_key_snapshot(key), actor=actor, source=source)
    return IssuedApiKey(api_key=key, secret=secret)


@transaction.atomic
def api_key_limits_set(*, api_key: ApiKey, limits: dict, actor: User | None = None,
                       source: str | None = None) -> ApiKey:
    """Replace the key's own budget (an empty dict: none). Effective on the key's next request."""
    key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    canonical = _canonical_limits(limits)
    before = key.limits
    key.limits = canonical
    key.save(update_fields=["limits"])
    audit_record(action="api_key.limits_change", object_type="api_key", object_id=key.pk, tenant=key.tenant_id,
                 before={"limits": before}, after={"limits": canonical}, actor=actor, source=source)
    tenant_id = key.tenant_id
    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant_id))
    return key


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, actor: User | None = None, source: str | None = None) -> IssuedApiKey:
    """A new secret (and prefix) for the same key and limits; the old secret stops on its next request."""
    key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if key.revoked_at is not None:
        raise BadRequest("This key is revoked; create a new one.", code="api_key_revoked")
    before = key.prefix
    key.public_id, secret, key.secret_hash = _new_key_secret()
    key.save(update_fields=["public_id", "secret_hash"])
    audit_record(action="api_key.rotate", object_type="api_key", object_id=key.pk, tenant=key.tenant_id,
                 before={"prefix": before}, after={"prefix": key.prefix}, actor=actor, source=source)
    tenant_id = key.tenant_id
    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant_id))
    return IssuedApiKey(api_key=key, secret=secret)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User | None = None, source: str | None = None) -> ApiKey:
    """Refused from the next request on, in every process. Kept (the ledger points at it)."""
    key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(action="api_key.revoke", object_type="api_key", object_id=key.pk, tenant=key.tenant_id,
                     before={"revoked_at": None}, after={"revoked_at": key.revoked_at}, actor=actor, source=source)
    tenant_id = key.tenant_id
    transaction.on_commit(lambda: identity_cache_invalidate(tenant_id=tenant_id))
    return key


# -------------------------------------------------------------------------------- audited row edits
# The Django Admin edits these rows field by field (its change forms, inlines and delete pages). Its
# save/delete hooks hand the rows to these functions rather than saving them: each change is audited
# (who, from what to what) and the identities cached from the row are dropped in every process once
# the transaction commits. There are no model signals doing this behind the scenes: a row saved any
# other way (a shell's `tenant.save()`) keeps its cached identities until they expire, so use these.

_USER_AUDITED = ("username", "email", "first_name", "last_name", "tenant", "role", "is_active", "is_staff",
                 "is_superuser")
_TENANT_AUDITED = ("name", "slug", "status", "enforcement_mode")
_ATI_AUDITED = ("plan_tier", "status", "expires_at", "note")


def _snapshot(obj, names: tuple[str, ...]) -> dict:
    snapshot = {}
    for name in names:
        field = obj._meta.get_field(name)
        snapshot[name] = getattr(obj, field.attname)
    return snapshot


def user_audit_snapshot(user: User) -> dict:
    """What an audit event shows of a user (never the password hash)."""
    return _snapshot(user, _USER_AUDITED)


def _user_audit(user: User, before: dict | None, *, actor: User | None, source: str | None,
                password_set: bool = False) -> None:
    """user.create, or one event per kind of change: role, deactivation, tenant, permissions, the rest."""
    after = user_audit_snapshot(user)
    if before is None:
        audit_record(action="user.create", object_type="user", object_id=user.pk, tenant=user.tenant_id,
                     after=after, actor=actor, source=source)
        return
    old, new = changed_fields(before, after)
    events = []
    if "role" in new:
        events.append(("user.role_change", ("role",)))
    if "is_active" in new:
        events.append(("user.deactivate" if not new["is_active"] else "user.activate", ("is_active",)))
    if "tenant" in new:
        events.append(("user.tenant_change", ("tenant",)))
    if {"is_staff", "is_superuser"} & set(new):
        events.append(("user.permissions_change", ("is_staff", "is_superuser")))
    taken = {name for _, names in events for name in names}
    rest = tuple(name for name in new if name not in taken)
    if rest:
        events.append(("user.update", rest))
    if password_set:
        events.append(("user.password_set", ()))  # that it was set; never the hash
    for action, names in events:
        audit_record(action=action, object_type="user", object_id=user.pk, tenant=user.tenant_id or before["tenant"],
                     before={n: old[n] for n in names if n in old} or None,
                     after={n: new[n] for n in names if n in new} or None, actor=actor, source=source)


def _identities_drop_on_commit(*tenant_ids: int | None) -> None:
    for tenant_id in {t for t in tenant_ids if t is not None}:
        transaction.on_commit(lambda tenant_id=tenant_id: identity_cache_invalidate(tenant_id=tenant_id))


@transaction.atomic
def user_save(*, user: User, actor: User | None = None, source: str | None = None) -> User:
    """Save a new or edited user as is (the admin's forms have validated it; a password is already
    hashed on it). Audited; a user moved between tenants loses the identities of both."""
    stored = User.objects.select_for_update().filter(pk=user.pk).first() if user.pk is not None else None
    before = user_audit_snapshot(stored) if stored is not None else None
    password_set = stored is not None and stored.password != user.password
    user.save()
    _user_audit(user, before, actor=actor, source=source, password_set=password_set)
    if stored is not None:
        _identities_drop_on_commit(user.tenant_id, stored.tenant_id)
    return user


@transaction.atomic
def user_delete(*, user: User, actor: User | None = None, source: str | None = None) -> None:
    """Delete a user outright (an operator's clean-up; tenants deactivate instead)."""
    user_id, tenant_id, before = user.pk, user.tenant_id, user_audit_snapshot(user)
    user.delete()
    audit_record(action="user.delete", object_type="user", object_id=user_id, tenant=tenant_id, before=before,
                 actor=actor, source=source)
    _identities_drop_on_commit(tenant_id)


@transaction.atomic
def tenant_save(*, tenant: Tenant, actor: User | None = None, source: str | None = None) -> Tenant:
    """Save an edited tenant (its name, slug, status, enforcement mode). Status and enforcement mode
    changes are recorded as such, the rest as tenant.update."""
    stored = Tenant.objects.select_for_update().get(pk=tenant.pk)
    old, new = changed_fields(_snapshot(stored, _TENANT_AUDITED), _snapshot(tenant, _TENANT_AUDITED))
    tenant.save()
    for name in ("status", "enforcement_mode"):
        if name in new:
            audit_record(action=f"tenant.{name}_change", object_type="tenant", object_id=tenant.pk, tenant=tenant,
                         before={name: old.pop(name)}, after={name: new.pop(name)}, actor=actor, source=source)
    if old or new:
        audit_record(action="tenant.update", object_type="tenant", object_id=tenant.pk, tenant=tenant, before=old,
                     after=new, actor=actor, source=source)
    _identities_drop_on_commit(tenant.pk)
    return tenant


@transaction.atomic
def tenant_delete(*, tenant: Tenant, actor: User | None = None, source: str | None = None) -> None:
    tenant_id, before = tenant.pk, _snapshot(tenant, _TENANT_AUDITED)
    tenant.delete()
    # The event outlives the tenant: its tenant column is emptied by the delete, so it names the slug.
    audit_record(action="tenant.delete", object_type="tenant", object_id=tenant_id, before=before, actor=actor,
                 source=source)
    _identities_drop_on_commit(tenant_id)


@transaction.atomic
def ati_token_save(*, token: ATIToken, actor: User | None = None, source: str | None = None) -> ATIToken:
    """Save an edited ATI token: a plan change is tenant.plan_change, a revocation ati_token.revoke."""
    stored = ATIToken.objects.select_for_update().get(pk=token.pk)
    old, new = changed_fields(_snapshot(stored, _ATI_AUDITED), _snapshot(token, _ATI_AUDITED))
    token.save()
    events = []
    if "plan_tier" in new:
        events.append(("tenant.plan_change", {"plan_tier": old.pop("plan_tier")}, {"plan_tier": new.pop("plan_tier")}))
    if new.get("status") == ATIToken.Status.REVOKED:
        events.append(("ati_token.revoke", {"status": old.pop("status")}, {"status": new.pop("status")}))
    if old or new:
        events.append(("ati_token.update", old, new))
    for action, before, after in events:
        audit_record(action=action, object_type="ati_token", object_id=token.pk, tenant=token.tenant_id,
                     before=before, after=after, actor=actor, source=source)
    _identities_drop_on_commit(token.tenant_id)
    return token


@transaction.atomic
def ati_token_delete(*, token: ATIToken, actor: User | None = None, source: str | None = None) -> None:
    token_id, tenant_id, before = token.pk, token.tenant_id, _snapshot(token, _ATI_AUDITED)
    token.delete()
    audit_record(action="ati_token.delete", object_type="ati_token", object_id=token_id, tenant=tenant_id,
                 before=before, actor=actor, source=source)
    _identities_drop_on_commit(tenant_id)
