"""Reads about identity: turning verified JWT claims or an API key into a `TenantContext`."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
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
from tenants.models import API_KEY_PREFIX, ApiKey, ATIToken, Tenant, User


@dataclass(frozen=True)
class ApiKeyInfo:
    """The API key a request authenticated with: what policy and the ledger need of it."""

    id: int
    name: str
    prefix: str
    is_service: bool
    allowed_tasks: tuple[str, ...]  # empty = every task
    allowed_model_classes: tuple[str, ...]  # empty = every class the plan allows
    expires_at: datetime | None
    # The key's own budget: (policy key of subject KEY, its canonical value), as ApiKey.limits holds it;
    # metering reads it through its registry (tenants knows no policy keys: DESIGN §2).
    limits: tuple[tuple[str, object], ...] = ()


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
    # Set when the request authenticated with an API key (a default: contexts pickled before keys
    # existed read as JWT contexts).
    api_key: ApiKeyInfo | None = None

    @property
    def user_id(self) -> int:
        return self.user.pk

    @property
    def api_key_id(self) -> int | None:
        return self.api_key.id if self.api_key is not None else None

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
    # The service account (API keys) is no one's to manage: it is not listed, nor changed through here.
    return User.objects.filter(tenant_id=tenant_id).exclude(role=User.Role.SERVICE).order_by("id")


def tenant_user_get(*, tenant_id: int, user_id: int) -> User | None:
    return User.objects.filter(tenant_id=tenant_id, pk=user_id).exclude(role=User.Role.SERVICE).first()


# --- API keys ---------------------------------------------------------------------------------------
#
# A key's identity is cached like a JWT's: one shared-cache entry per (key, acting user), stored
# under the tenant's identity generation, which every change to the key, its tenant, the tenant's
# ATI token or its users moves. A hit is one round trip (the generation and the entry together):
# the tenant a key belongs to never changes, so each process remembers it per public id.

_key_tenants: dict[str, int] = {}


def api_key_parse(raw: str) -> tuple[str, str] | None:
    """(public id, secret) of a string shaped like a key, else None (it may be a JWT)."""
    if not raw.startswith(API_KEY_PREFIX):
        return None
    public_id, sep, secret = raw[len(API_KEY_PREFIX):].partition("_")
    if not sep or not public_id or not secret or len(public_id) > 16:
        return None
    return public_id, secret


def _key_tenant_remember(public_id: str, tenant_id: int) -> None:
    if len(_key_tenants) >= _MEMO_MAX:
        _key_tenants.clear()
    _key_tenants[public_id] = tenant_id


def _key_entry_key(public_id: str, acting: str) -> str:
    # The username goes in as its hash: any characters, bounded length.
    acting_part = hashlib.sha256(acting.encode()).hexdigest()[:32] if acting else "-"
    return f"apikey:v1:{public_id}:{acting_part}"


def _invalid_key() -> AuthenticationFailed:
    return AuthenticationFailed("The API key is invalid.", code="api_key_invalid")


def _key_check_cached(context: TenantContext, secret_hash: str, secret: str) -> TenantContext:
    if not hmac.compare_digest(secret_hash, ApiKey.hash_secret(secret)):
        raise _invalid_key()
    key = context.api_key
    if key is not None and key.expires_at is not None and key.expires_at <= timezone.now():
        raise AuthenticationFailed("This API key has expired.", code="api_key_expired")
    return _check_cached(context)


def _key_lookup(public_id: str, acting: str) -> tuple[tuple | None, int | None, str | None]:
    """(the cached entry or None, the key's tenant id or None, the tenant's generation or None)."""
    entry_key = _key_entry_key(public_id, acting)
    tenant_id = _key_tenants.get(public_id)
    if tenant_id is None:
        entry = cache.get(entry_key)  # a process's first sight of this key: two round trips, once
        if not isinstance(entry, tuple):
            return None, None, None
        tenant_id = entry[0]
        generation = cache.get(_generation_key(tenant_id))
        _key_tenant_remember(public_id, tenant_id)
    else:
        values = cache.get_many([_generation_key(tenant_id), entry_key])
        generation, entry = values.get(_generation_key(tenant_id)), values.get(entry_key)
    if generation is None or not isinstance(entry, tuple) or entry[1] != generation:
        return None, tenant_id, generation
    return entry, tenant_id, generation


def api_key_cached(*, public_id: str, secret: str, acting: str = "") -> TenantContext | None:
    """The key's identity if the shared cache holds a current one, else None. Cache only: safe on an event loop."""
    entry, _, _ = _key_lookup(public_id, acting)
    if entry is None:
        return None
    context = _unpickled(_key_entry_key(public_id, acting), entry[3])
    return _key_check_cached(context, entry[2], secret)


def _service_account(tenant_id: int) -> User | None:
    return User.objects.filter(tenant_id=tenant_id, role=User.Role.SERVICE).order_by("pk").first()


def _api_key_from_db(*, public_id: str, secret: str, acting: str) -> tuple[TenantContext, str]:
    key = ApiKey.objects.filter(public_id=public_id).first()
    if key is None or not hmac.compare_digest(key.secret_hash, ApiKey.hash_secret(secret)):
        raise _invalid_key()
    if key.revoked_at is not None:
        raise AuthenticationFailed("This API key has been revoked.", code="api_key_revoked")
    if key.is_expired():
        raise AuthenticationFailed("This API key has expired.", code="api_key_expired")
    if acting:
        if not key.is_service:
            raise Forbidden("A user key acts as its own user; X-Gateway-User is for service keys.",
                            code="acting_user_not_allowed")
        user = User.objects.filter(tenant_id=key.tenant_id, username=acting).first()
        if user is None or not user.is_active or user.role == User.Role.SERVICE:
            raise Forbidden("X-Gateway-User must name an active user of the key's tenant.", code="acting_user_invalid")
    elif key.user_id is not None:
        user = User.objects.get(pk=key.user_id)
    else:
        user = _service_account(key.tenant_id)
        if user is None:  # created with the tenant's first service key; only gone if deleted by hand
            raise Forbidden("This tenant has no service account; create the service key again.",
                            code="service_account_missing")
    tenant_ati = Tenant.objects.filter(pk=key.tenant_id).values_list("signup_ati_token_id", flat=True).first()
    context = _resolve_from_db(user_id=user.pk, tenant_id=key.tenant_id, ati_id=tenant_ati)
    info = ApiKeyInfo(id=key.pk, name=key.name, prefix=key.prefix, is_service=key.is_service,
                      allowed_tasks=tuple(key.allowed_tasks or ()),
                      allowed_model_classes=tuple(key.allowed_model_classes or ()), expires_at=key.expires_at,
                      limits=tuple(sorted((key.limits or {}).items())))
    # last_used_at is written when the identity is resolved (a cache miss), not on every call: at
    # most once per IDENTITY_CACHE_SECONDS per process, and no write on the hot path.
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return dataclasses.replace(context, api_key=info), key.secret_hash


def api_key_resolve(*, public_id: str, secret: str, acting: str = "") -> TenantContext:
    """Check the key (secret, not revoked, not expired), the acting user and the whole chain
    tenant -> ATI token -> plan, as for a JWT (cached, invalidated on change)."""
    entry, tenant_id, generation = _key_lookup(public_id, acting)
    if entry is not None:
        return _key_check_cached(_unpickled(_key_entry_key(public_id, acting), entry[3]), entry[2], secret)
    if tenant_id is None:
        tenant_id = ApiKey.objects.filter(public_id=public_id).values_list("tenant_id", flat=True).first()
        if tenant_id is None:
            raise _invalid_key()
        generation = cache.get(_generation_key(tenant_id))
    if generation is None:
        cache.add(_generation_key(tenant_id), uuid.uuid4().hex, None)
        generation = cache.get(_generation_key(tenant_id))
    # As for JWTs: the generation was read before the database, so a change while we read is never served.
    context, secret_hash = _api_key_from_db(public_id=public_id, secret=secret, acting=acting)
    _key_tenant_remember(public_id, tenant_id)
    if generation is not None:
        cache.set(_key_entry_key(public_id, acting),
                  (tenant_id, generation, secret_hash, pickle.dumps(context, pickle.HIGHEST_PROTOCOL)),
                  settings.IDENTITY_CACHE_SECONDS)
    return context


def api_keys_list(*, tenant_id: int):
    keys = ApiKey.objects.filter(tenant_id=tenant_id).select_related("user", "created_by")
    return keys.order_by("-created_at", "-id")


def api_key_get(*, tenant_id: int, key_id: int) -> ApiKey | None:
    return ApiKey.objects.filter(tenant_id=tenant_id, pk=key_id).select_related("user", "created_by").first()
