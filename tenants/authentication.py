from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.tokens import Token

from gateway_project.errors import AuthenticationFailed
from tenants.selectors import TenantContext, identity_resolve
from tenants.tokens import SESSION_CLAIM


def identity_claims(validated_token: Token) -> tuple[int, int | None, str | None]:
    """(user id, tenant id, ATI id) of a verified token, for `identity_resolve`."""
    try:
        user_id = int(validated_token["sub"])
    except (KeyError, TypeError, ValueError):
        raise AuthenticationFailed("The token has no valid subject.", code="claims_missing") from None
    return user_id, validated_token.get("tenant_id"), validated_token.get("ati_id")


def session_claim(validated_token: Token) -> object:
    """The token's session version ("" for tokens issued before versions existed)."""
    return validated_token.get(SESSION_CLAIM, "")


def session_check(context: TenantContext, session_version: object) -> TenantContext:
    """Refuse a token issued before the user's last password change, deactivation or "sign out
    everywhere". The version rides on the cached identity, so this costs one comparison."""
    if session_version != context.user.session_version:
        raise AuthenticationFailed(
            "This session has ended (password changed, account deactivated or signed out everywhere); "
            "sign in again.",
            code="session_revoked",
        )
    return context


def context_from_token(validated_token: Token) -> TenantContext:
    user_id, tenant_id, ati_id = identity_claims(validated_token)
    context = identity_resolve(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    return session_check(context, session_claim(validated_token))


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
