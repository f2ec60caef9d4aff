"""JWTs signed by the product's own identity service (optional; DESIGN §1: the product
authenticates, the gateway enforces).

Configured by EXTERNAL_JWT_ISSUER and EXTERNAL_JWT_AUDIENCE, plus EXTERNAL_JWT_JWKS_URL (RS256,
keys fetched and cached by PyJWT's PyJWKClient) or EXTERNAL_JWT_HS256_SECRET. A token whose `iss`
is the configured issuer is verified here (signature, exp, iss, aud); its `sub` (user id),
`tenant_id` and `ati_id` then go through the same `identity_resolve` as the gateway's own tokens.
"""

from __future__ import annotations

import threading
from typing import Any

import jwt
from django.conf import settings

from gateway_project.errors import AuthenticationFailed

_clients: dict[str, jwt.PyJWKClient] = {}
_lock = threading.Lock()


def external_jwt_enabled() -> bool:
    return bool(settings.EXTERNAL_JWT_ISSUER and (settings.EXTERNAL_JWT_JWKS_URL or settings.EXTERNAL_JWT_HS256_SECRET))


def is_external(raw: str) -> bool:
    """Does this token claim to come from the configured issuer? (Unverified: it only picks the verifier.)"""
    if not external_jwt_enabled():
        return False
    try:
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return claims.get("iss") == settings.EXTERNAL_JWT_ISSUER


def _jwks_client(url: str) -> jwt.PyJWKClient:
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = jwt.PyJWKClient(
                url, cache_keys=True, lifespan=settings.EXTERNAL_JWT_JWKS_CACHE_SECONDS, timeout=5)
        return client


def external_clients_clear() -> None:
    with _lock:
        _clients.clear()


def _invalid() -> AuthenticationFailed:
    return AuthenticationFailed("The access token is invalid or expired.", code="token_not_valid")


def external_claims(raw: str) -> dict[str, Any]:
    """The verified claims of an external token. Blocking (a JWKS fetch on a key miss): call off the loop."""
    options = {"require": ["exp", "sub", "iss"]}
    audience = settings.EXTERNAL_JWT_AUDIENCE or None
    if audience:
        options["require"].append("aud")
    try:
        if settings.EXTERNAL_JWT_JWKS_URL:
            key = _jwks_client(settings.EXTERNAL_JWT_JWKS_URL).get_signing_key_from_jwt(raw).key
            algorithms = ["RS256"]
        else:
            key, algorithms = settings.EXTERNAL_JWT_HS256_SECRET, ["HS256"]
        return jwt.decode(raw, key, algorithms=algorithms, audience=audience, issuer=settings.EXTERNAL_JWT_ISSUER,
                          options=options, leeway=settings.EXTERNAL_JWT_LEEWAY_SECONDS)
    except jwt.PyJWKClientError:
        # The identity service unreachable, or no key with the token's kid.
        raise AuthenticationFailed("The token's signing key could not be found.", code="token_not_valid") from None
    except jwt.PyJWTError:
        raise _invalid() from None


def external_identity_claims(claims: dict[str, Any]) -> tuple[int, int | None, str | None]:
    """(user id, tenant id, ATI id), as the gateway's own tokens carry them."""
    try:
        user_id = int(claims["sub"])
        tenant_id = claims.get("tenant_id")
        if isinstance(tenant_id, bool):
            raise TypeError
        tenant_id = int(tenant_id) if tenant_id is not None else None
    except (KeyError, TypeError, ValueError):
        raise AuthenticationFailed("The token has no valid subject or tenant.", code="claims_missing") from None
    ati_id = claims.get("ati_id")
    return user_id, tenant_id, ati_id if isinstance(ati_id, str) else None
