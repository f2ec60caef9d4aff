"""Reads about identity: turning verified JWT claims into a `TenantContext`."""

from __future__ import annotations

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


def _cache_key(*, user_id: int, tenant_id: int, ati_id: str) -> str:
    generation = cache.get(_generation_key(tenant_id))
    if generation is None:
        generation = uuid.uuid4().hex
        # add(): two processes racing here agree on one generation.
        cache.add(_generation_key(tenant_id), generation, None)
        generation = cache.get(_generation_key(tenant_id), generation)
    return f"identity:{tenant_id}:{generation}:{user_id}:{ati_id}"


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


def identity_resolve(*, user_id: int, tenant_id: int | None, ati_id: str | None) -> TenantContext:
    """Check every link of the chain user -> tenant -> ATI token -> plan (cached, invalidated on change)."""
    if tenant_id is None or not ati_id:
        raise AuthenticationFailed("The token does not carry tenant and ATI claims.", code="claims_missing")
    key = _cache_key(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    context: TenantContext | None = cache.get(key)
    if context is None:
        context = _resolve_from_db(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
        cache.set(key, context, settings.IDENTITY_CACHE_SECONDS)
    elif context.ati_expires_at is not None and context.ati_expires_at <= timezone.now():
        raise Forbidden("The tenant's ATI token has expired.", code="ati_token_expired")
    return context


def tenant_users_list(*, tenant_id: int):
    return User.objects.filter(tenant_id=tenant_id).order_by("id")


def tenant_user_get(*, tenant_id: int, user_id: int) -> User | None:
    return User.objects.filter(tenant_id=tenant_id, pk=user_id).first()
