"""JWTs that carry the whole chain of authority: sub (user), tenant_id and ati_id, plus the user's
session version ("sv"), which ends every earlier token when it changes."""

from __future__ import annotations

from rest_framework_simplejwt.tokens import RefreshToken

from tenants.models import User

SESSION_CLAIM = "sv"


def tokens_for_user(user: User) -> dict[str, str]:
    refresh = RefreshToken.for_user(user)
    tenant = user.tenant
    refresh["tenant_id"] = tenant.pk if tenant else None
    refresh["ati_id"] = tenant.signup_ati_token_id if tenant else None
    refresh[SESSION_CLAIM] = user.session_version
    # Claims set on the refresh token are copied into every access token made from it.
    return {"access": str(refresh.access_token), "refresh": str(refresh)}
