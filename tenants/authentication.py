"""Credentials, for the DRF API and the async /v1 path alike (llm/auth.py):

- `Authorization: Bearer <jwt>`: the gateway's own access token, or (when configured) one of the
  product's identity service (tenants/external_jwt.py);
- `Authorization: Bearer gw_live_...` or `x-api-key: gw_live_...` (the Anthropic SDK's header): an API
  key (the x-api-key header may carry an access token too). A service key may name the acting user with
  `X-Gateway-User`; nothing else may.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.tokens import Token

from gateway_project.errors import AuthenticationFailed, BadRequest, Forbidden
from tenants import external_jwt
from tenants.selectors import TenantContext, api_key_parse, api_key_resolve, identity_resolve
from tenants.tokens import SESSION_CLAIM

ACTING_USER_HEADER = "x-gateway-user"


@dataclass(frozen=True)
class Credential:
    kind: str  # "key" | "jwt" | "external"
    raw: str  # the JWT ("jwt", "external") or the key's secret part ("key")
    public_id: str = ""
    acting: str = ""  # X-Gateway-User (keys only)


def credential(headers: Mapping[str, str]) -> Credential | None:
    """The request's credential, or None when it sends none. `headers` answer lower-case names
    (Django's request.headers, or the ASGI fast path's dict)."""
    authorization = (headers.get("authorization") or "").strip()
    x_api_key = (headers.get("x-api-key") or "").strip()
    acting = (headers.get(ACTING_USER_HEADER) or "").strip()
    if len(acting) > 150:
        raise BadRequest("X-Gateway-User is at most 150 characters.", code="invalid_acting_user")
    if authorization:
        scheme, _, raw = authorization.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            raise AuthenticationFailed("Send an access token or API key as 'Authorization: Bearer <token>'.",
                                       code="not_authenticated")
    elif x_api_key:
        # The Anthropic SDK sends its `api_key` here: a gateway API key, or an access token (issue 13 §3:
        # the credential in either header).
        raw = x_api_key
    else:
        return None
    parsed = api_key_parse(raw)
    if parsed is not None:
        return Credential("key", parsed[1], public_id=parsed[0], acting=acting)
    if acting:
        raise Forbidden("X-Gateway-User is for service keys; an access token acts as its own user.",
                        code="acting_user_not_allowed")
    return Credential("external" if external_jwt.is_external(raw) else "jwt", raw)


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


def context_from_external(raw: str) -> TenantContext:
    """An external identity service's token: verified there, then the same chain checks. It carries no
    session version (its sessions are the identity service's); deactivation still ends it."""
    user_id, tenant_id, ati_id = external_jwt.external_identity_claims(external_jwt.external_claims(raw))
    return identity_resolve(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)


class TenantJWTAuthentication(JWTAuthentication):
    """Bearer JWT or API key -> (user, TenantContext); `request.auth` is the resolved context."""

    def authenticate(self, request: Request) -> tuple[Any, TenantContext] | None:
        header = self.get_header(request)
        raw_token = self.get_raw_token(header) if header is not None else None  # simplejwt's header rules
        if raw_token is None:
            if not request.headers.get("x-api-key"):
                return None
            found = credential({"x-api-key": request.headers.get("x-api-key", ""),
                                ACTING_USER_HEADER: request.headers.get(ACTING_USER_HEADER, "")})
        else:
            found = credential({"authorization": "Bearer " + raw_token.decode("latin-1"),
                                ACTING_USER_HEADER: request.headers.get(ACTING_USER_HEADER, "")})
        if found.kind == "key":
            context = api_key_resolve(public_id=found.public_id, secret=found.raw, acting=found.acting)
        elif found.kind == "external":
            context = context_from_external(found.raw)
        else:
            context = context_from_token(self.get_validated_token(found.raw.encode()))
        return context.user, context
