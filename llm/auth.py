"""Identity for the async (non-DRF) metered endpoints; same credentials and checks as the DRF API
(tenants/authentication.py: a Bearer JWT, or an API key as Bearer or in x-api-key).

`authenticate_request` is the one entry the /v1 views use.

Both steps are cheap on a hit and run on the event loop: the token's signature is verified once
per token string (a bounded LRU of verified claims; expiry is checked on every call), and the
identity comes from the shared cache in one round trip. Only a miss hops to a thread for the
database (`db_step`): sync ORM calls are not allowed on the loop. The token's session version is
compared with the one on the cached identity (which every user change invalidates), so a password
change or "sign out everywhere" ends the token on its next call at the cost of a comparison.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

from django.http import HttpRequest
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from gateway_project.errors import AuthenticationFailed
from llm.db import db_step
from tenants import external_jwt
from tenants.authentication import credential, identity_claims, session_check, session_claim
from tenants.selectors import TenantContext, api_key_cached, api_key_resolve, identity_cached, identity_resolve

TOKEN_MEMO_MAX = 4096

# raw token -> (expired from this epoch time on, user id, tenant id, ATI id, session version). Only
# tokens whose signature verified get in. (A lock: WSGI deployments run async views on several threads.)
_verified: OrderedDict[str, tuple[float, int, int | None, str | None, object]] = OrderedDict()
_lock = threading.Lock()


def _invalid() -> AuthenticationFailed:
    return AuthenticationFailed("The access token is invalid or expired.", code="token_not_valid")


def token_memo_clear() -> None:
    with _lock:
        _verified.clear()


def _remember(raw: str, entry: tuple) -> None:
    with _lock:
        _verified[raw] = entry
        if len(_verified) > TOKEN_MEMO_MAX:
            _verified.popitem(last=False)


def _memo(raw: str) -> tuple | None:
    with _lock:
        entry = _verified.get(raw)
        if entry is not None:
            _verified.move_to_end(raw)
    return entry


def _unexpired(raw: str, entry: tuple) -> tuple:
    if entry[0] <= time.time():  # what simplejwt's check_exp decides: exp <= now - leeway
        with _lock:
            _verified.pop(raw, None)
        raise _invalid()
    return entry[1:]


def _external_entry(raw: str) -> tuple:
    claims = external_jwt.external_claims(raw)
    # No session version: the identity service owns its sessions (None skips the comparison).
    return (float(claims["exp"]) + external_jwt.settings.EXTERNAL_JWT_LEEWAY_SECONDS,
            *external_jwt.external_identity_claims(claims), None)


async def _external_claims(raw: str) -> tuple[int, int | None, str | None, object]:
    entry = _memo(raw)
    if entry is None:
        # Off the loop: a key miss fetches the identity service's JWKS.
        entry = await asyncio.to_thread(_external_entry, raw)
        _remember(raw, entry)
    return _unexpired(raw, entry)


def _claims(raw: str) -> tuple[int, int | None, str | None, object]:
    entry = _memo(raw)
    if entry is None:
        try:
            token = AccessToken(raw)
        except TokenError:
            raise _invalid() from None
        leeway = token.get_token_backend().get_leeway().total_seconds()
        entry = (float(token["exp"]) + leeway, *identity_claims(token), session_claim(token))
        _remember(raw, entry)
    return _unexpired(raw, entry)


async def authenticate_request(request: HttpRequest | Mapping[str, str]) -> TenantContext:
    """The caller's identity from a request (or its headers, looked up by lower-case name):
    `Authorization: Bearer <jwt | gw_live_ key>` or `x-api-key: <gw_live_ key>`, with
    `X-Gateway-User` for a service key. One shared-cache round trip on a hit."""
    headers = request.headers if isinstance(request, HttpRequest) else request
    found = credential(headers)
    if found is None:
        raise AuthenticationFailed("Send an access token as 'Authorization: Bearer <token>' or an API key "
                                   "(Bearer or x-api-key).", code="not_authenticated")
    if found.kind == "key":
        context = api_key_cached(public_id=found.public_id, secret=found.raw, acting=found.acting)
        if context is None:
            context = await db_step(api_key_resolve)(public_id=found.public_id, secret=found.raw,
                                                     acting=found.acting)
        return context
    if found.kind == "external":
        user_id, tenant_id, ati_id, session_version = await _external_claims(found.raw)
    else:
        user_id, tenant_id, ati_id, session_version = _claims(found.raw)
    context = identity_cached(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    if context is None:
        context = await db_step(identity_resolve)(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    return context if session_version is None else session_check(context, session_version)


async def authenticate(authorization: str) -> TenantContext:
    """The caller's identity from an `Authorization` header value alone."""
    return await authenticate_request({"authorization": authorization})
