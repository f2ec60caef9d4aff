"""Reads about identity: turning verified JWT claims into a `TenantContext`."""

from __future__ import annotations

import pickle
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from catalog.models import Plan
from gateway_project.errors import AuthenticationFailed, Forbidden
from tenants.models import ATIToken, Tenant, User


@dataclass(frozen=True)
class TenantContext:
    """Who is calling, resolved and checked against the database."""

    user: User
    tenant_id: int
    tenant_slug: str
    tenant_name: str
    ati_id: str
    ati_expires_at: datetime | None
    plan_code: str
    plan_id: int
    role: str
    enforcement_mode: str | None

    @property
    def user_id(self) -> int:
        return self.user.pk

    @property
    def is_tenant_admin(self) -> bool:
        return self.role == User.Role.ADMIN


def _generation_key(tenant_id: int) -> str:
    return f"identity-gen:{tenant_id}"


def identity_cache_invalidate(*, tenant_id: int) -> None:
    """Every cached identity of the tenant goes stale at once (a new generation)."""
    cache.set(_generation_key(tenant_id), uuid.uuid4().hex, None)


def _entry_key(*, user_id: int, tenant_id: int, ati_id: str) -> str:
    # "v2": entries pickled before users had a session version are never read (a User unpickled
    # without it would load the field from the database, on the event loop).
    return f"identity:v2:{tenant_id}:{user_id}:{ati_id}"


# An entry in the shared cache is (generation it was built under, pickled TenantContext): one
# round trip fetches it with the tenant's current generation, and it counts only if the two agree.
# The pickle stays bytes in the entry so that a hit need not rebuild the User model: this process
# keeps the unpickled context of the blob it last saw per entry key (contexts are read-only).
_MEMO_MAX = 10_000
_memo: dict[str, tuple[bytes, TenantContext]] = {}
_memo_lock = threading.Lock()


def identity_memo_clear() -> None:
    with _memo_lock:
        _memo.clear()


def _unpickled(key: str, blob: bytes) -> TenantContext:
    memo = _memo.get(key)
    if memo is not None and memo[0] == blob:
        return memo[1]
    context: TenantContext = pickle.loads(blob)
    with _memo_lock:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[key] = (blob, context)
    return context


def _lookup(*, user_id: int, tenant_id: int, ati_id: str) -> tuple[TenantContext | None, str | None]:
    """(the cached context or None, the tenant's current generation or None) in one cache round trip."""
    key = _entry_key(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    generation_key = _generation_key(tenant_id)
    values = cache.get_many([generation_key, key])
    generation, entry = values.get(generation_key), values.get(key)
    if generation is None or not isinstance(entry, tuple) or entry[0] != generation:
        return None, generation
    return _unpickled(key, entry[1]), generation


def _check_cached(context: TenantContext) -> TenantContext:
    if context.ati_expires_at is not None and context.ati_expires_at <= timezone.now():
        raise Forbidden("The tenant's ATI token has expired.", code="ati_token_expired")
    return context


def _claims_check(tenant_id: int | None, ati_id: str | None) -> None:
    if tenant_id is None or not ati_id:
        raise AuthenticationFailed("The token does not carry tenant and ATI claims.", code="claims_missing")


def _resolve_from_db(*, user_id: int, tenant_id: int, ati_id: str) -> TenantContext:
    user = User.objects.filter(pk=user_id).first()
    if user is None or not user.is_active:
        raise AuthenticationFailed("The user of this token is inactive or gone.", code="user_inactive")
    if user.tenant_id is None:
        raise Forbidden("This account does not belong to a tenant.", code="no_tenant")
    if user.tenant_id != tenant_id:
        raise AuthenticationFailed("The token's tenant does not match the user's tenant.", code="tenant_mismatch")
    tenant = Tenant.objects.select_related("signup_ati_token").get(pk=tenant_id)
    if tenant.status != Tenant.Status.ACTIVE:
        raise Forbidden("This tenant is suspended.", code="tenant_suspended")
    token: ATIToken = tenant.signup_ati_token
    if token.pk != ati_id or token.tenant_id != tenant.pk:
        raise AuthenticationFailed("The token's ATI id does not belong to this tenant.", code="ati_token_mismatch")
    if token.status != ATIToken.Status.ACTIVE:
        raise Forbidden("The tenant's ATI token has been revoked.", code="ati_token_revoked")
    if token.is_expired():
        raise Forbidden("The tenant's ATI token has expired.", code="ati_token_expired")
    plan = Plan.objects.filter(code=token.plan_tier, is_active=True).first()
    if plan is None:
        raise Forbidden(f"The tenant's plan '{token.plan_tier}' is not available.", code="plan_unknown")
    return TenantContext(
        user=user,
        tenant_id=tenant.pk,
        tenant_slug=tenant.slug,
        tenant_name=tenant.name,
        ati_id=token.pk,
        ati_expires_at=token.expires_at,
        plan_code=plan.code,
        plan_id=plan.pk,
        role=user.role,
        enforcement_mode=tenant.enforcement_mode,
    )


def identity_cached(*, user_id: int, tenant_id: int | None, ati_id: str | None) -> TenantContext | None:
    """The identity if the shared cache holds a current one, else None (resolve it with
    `identity_resolve`). Touches only the cache, never the database: safe on an event loop."""
    _claims_check(tenant_id, ati_id)
    context, _ = _lookup(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    return _check_cached(context) if context is not None else None


def identity_resolve(*, user_id: int, tenant_id: int | None, ati_id: str | None) -> TenantContext:
    """Check every link of the chain user -> tenant -> ATI token -> plan (cached, invalidated on change)."""
    _claims_check(tenant_id, ati_id)
    context, generation = _lookup(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    if context is not None:
        return _check_cached(context)
    if generation is None:
        # add(): two processes racing here agree on one generation.
        cache.add(_generation_key(tenant_id), uuid.uuid4().hex, None)
        generation = cache.get(_generation_key(tenant_id))
    # The generation was read before the database: if the rows change (and the generation moves)
    # while we read them, the entry is stored under the old generation and never served.
    context = _resolve_from_db(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    if generation is not None:
        key = _entry_key(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
        cache.set(key, (generation, pickle.dumps(context, pickle.HIGHEST_PROTOCOL)), settings.IDENTITY_CACHE_SECONDS)
    return context


def username_exists(*, username: str) -> bool:
    """As `authenticate()` looks users up (the exact username)."""
    return User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists()


def tenant_users_list(*, tenant_id: int):
    return User.objects.filter(tenant_id=tenant_id).order_by("id")


def tenant_user_get(*, tenant_id: int, user_id: int) -> User | None:
    return User.objects.filter(tenant_id=tenant_id, pk=user_id).first()
