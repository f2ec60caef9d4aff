"""Bearer-JWT identity for the async (non-DRF) metered endpoints; same checks as the DRF API."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from gateway_project.errors import AuthenticationFailed
from llm.db import db_step
from tenants.authentication import context_from_token
from tenants.selectors import TenantContext


async def authenticate_request(request: HttpRequest) -> TenantContext:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise AuthenticationFailed("Send an access token as 'Authorization: Bearer <token>'.",
                                   code="not_authenticated")
    try:
        token = AccessToken(raw.strip())
    except TokenError:
        raise AuthenticationFailed("The access token is invalid or expired.", code="token_not_valid") from None
    return await db_step(context_from_token)(token)
