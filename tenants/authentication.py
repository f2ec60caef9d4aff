from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.tokens import Token

from tenants.selectors import TenantContext, identity_resolve


def identity_claims(validated_token: Token) -> tuple[int, int | None, str | None]:
    """(user id, tenant id, ATI id) of a verified token, for `identity_resolve`."""
    try:
        user_id = int(validated_token["sub"])
    except (KeyError, TypeError, ValueError):
        from gateway_project.errors import AuthenticationFailed

        raise AuthenticationFailed("The token has no valid subject.", code="claims_missing") from None
    return user_id, validated_token.get("tenant_id"), validated_token.get("ati_id")


def context_from_token(validated_token: Token) -> TenantContext:
    user_id, tenant_id, ati_id = identity_claims(validated_token)
    return identity_resolve(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)


class TenantJWTAuthentication(JWTAuthentication):
    """Bearer JWT -> (user, TenantContext); `request.auth` is the resolved context."""

    def authenticate(self, request: Request) -> tuple[Any, TenantContext] | None:
        header = self.get_header(request)
        if header is None:
            return None
        raw_token = self.get_raw_token(header)
        if raw_token is None:
            return None
        validated_token = self.get_validated_token(raw_token)
        context = context_from_token(validated_token)
        return context.user, context
