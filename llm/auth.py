"""Bearer-JWT identity for the async (non-DRF) metered endpoints; same checks as the DRF API.

Both steps are cheap on a hit and run on the event loop: the token's signature is verified once
per token string (a bounded LRU of verified claims; expiry is checked on every call), and the
identity comes from the shared cache in one round trip. Only a miss hops to a thread for the
database (`db_step`): sync ORM calls are not allowed on the loop. The token's session version is
compared with the one on the cached identity (which every user change invalidates), so a password
change or "sign out everywhere" ends the token on its next call at the cost of a comparison.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from django.http import HttpRequest
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from gateway_project.errors import AuthenticationFailed
from llm.db import db_step
from tenants.authentication import identity_claims, session_check, session_claim
from tenants.selectors import TenantContext, identity_cached, identity_resolve

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


def _claims(raw: str) -> tuple[int, int | None, str | None, object]:
    with _lock:
        entry = _verified.get(raw)
        if entry is not None:
            _verified.move_to_end(raw)
    if entry is None:
        try:
            token = AccessToken(raw)
        except TokenError:
            raise _invalid() from None
        leeway = token.get_token_backend().get_leeway().total_seconds()
        entry = (float(token["exp"]) + leeway, *identity_claims(token), session_claim(token))
        with _lock:
            _verified[raw] = entry
            if len(_verified) > TOKEN_MEMO_MAX:
                _verified.popitem(last=False)
    if entry[0] <= time.time():  # what simplejwt's check_exp decides: exp <= now - leeway
        with _lock:
            _verified.pop(raw, None)
        raise _invalid()
    return entry[1:]


async def authenticate(authorization: str) -> TenantContext:
    """The caller's identity from an `Authorization` header value."""
    scheme, _, raw = authorization.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise AuthenticationFailed("Send an access token as 'Authorization: Bearer <token>'.",
                                   code="not_authenticated")
    user_id, tenant_id, ati_id, session_version = _claims(raw)
    context = identity_cached(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    if context is None:
        context = await db_step(identity_resolve)(user_id=user_id, tenant_id=tenant_id, ati_id=ati_id)
    return session_check(context, session_version)


async def authenticate_request(request: HttpRequest) -> TenantContext:
    return await authenticate(request.headers.get("Authorization", ""))
