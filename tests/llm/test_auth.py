"""Identity on the metered path: verified tokens and cached identities are cheap on a hit, and still
exact — an expired token, a revoked ATI token, a suspended tenant, a deactivated user or an ended
session (password change, sign out everywhere) is refused on the very next call."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from gateway_project.errors import AuthenticationFailed, Forbidden
from llm import auth
from tenants import services
from tenants.selectors import identity_cached, identity_resolve
from tenants.tokens import tokens_for_user
from tests.asgi_client import GatewayClient
from tests.conftest import PASSWORD, assert_error

URL = "/v1/LLM2_DRAFT/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "a hinge"}], "max_tokens": 20}


@pytest.fixture(autouse=True)
def _fresh_token_memo():
    auth.token_memo_clear()
    yield
    auth.token_memo_clear()


def authenticate(token: str):
    return asyncio.run(auth.authenticate(f"Bearer {token}"))


def ids(persona) -> dict:
    tenant = persona.tenant
    return {"user_id": persona.user.pk, "tenant_id": tenant.pk, "ati_id": tenant.signup_ati_token_id}


@pytest.mark.django_db(transaction=True)
def test_a_cached_identity_costs_one_cache_round_trip_and_no_query(tenant_admin, monkeypatch,
                                                                   django_assert_num_queries):
    assert identity_cached(**ids(tenant_admin)) is None  # cold: the caller must resolve it (off the loop)
    resolved = identity_resolve(**ids(tenant_admin))
    round_trips = []
    real_get_many = cache.get_many
    monkeypatch.setattr(cache, "get_many", lambda keys, *a, **k: round_trips.append(keys) or real_get_many(keys))
    with django_assert_num_queries(0):
        first = identity_cached(**ids(tenant_admin))
        second = identity_cached(**ids(tenant_admin))
    assert first == resolved and second is first  # unpickled once, then this process's copy
    assert len(round_trips) == 2


@pytest.mark.django_db(transaction=True)
def test_suspension_is_seen_by_the_next_cached_lookup(tenant_admin):
    identity_resolve(**ids(tenant_admin))
    assert identity_cached(**ids(tenant_admin)) is not None
    services.tenant_suspend(slug=tenant_admin.tenant.slug)
    assert identity_cached(**ids(tenant_admin)) is None  # the generation moved: nothing cached counts
    with pytest.raises(Forbidden) as refused:
        identity_resolve(**ids(tenant_admin))
    assert refused.value.code == "tenant_suspended"


@pytest.mark.django_db(transaction=True)
def test_the_metered_path_refuses_the_next_call_after_each_break(tenant_admin, member):
    admin_client, member_client = tenant_admin.client, member.client
    assert admin_client.post(URL, BODY, format="json").status_code == 200
    assert member_client.post(URL, BODY, format="json").status_code == 200  # both identities cached
    services.user_deactivate(user=member.user, actor=tenant_admin.user)
    assert_error(member_client.post(URL, BODY, format="json"), 401, "user_inactive")
    assert admin_client.post(URL, BODY, format="json").status_code == 200
    services.ati_token_revoke(ati_id=tenant_admin.tenant.signup_ati_token_id)
    assert_error(admin_client.post(URL, BODY, format="json"), 403, "ati_token_revoked")


@pytest.mark.django_db(transaction=True)
def test_a_token_is_verified_once_then_its_expiry_is_checked_on_every_call(tenant_admin, monkeypatch):
    token = tokens_for_user(tenant_admin.user)["access"]
    verified = []
    real = AccessToken.__init__
    monkeypatch.setattr(AccessToken, "__init__", lambda self, *a, **k: verified.append(1) or real(self, *a, **k))
    assert authenticate(token).user_id == tenant_admin.user.pk
    assert authenticate(token).user_id == tenant_admin.user.pk
    assert len(verified) == 1
    expires = AccessToken(token, verify=False)["exp"]
    monkeypatch.setattr(time, "time", lambda: expires + 1)
    with pytest.raises(AuthenticationFailed) as refused:
        authenticate(token)
    assert refused.value.code == "token_not_valid"


@pytest.mark.django_db(transaction=True)
def test_only_verified_tokens_are_remembered_and_the_memo_is_bounded(tenant_admin, monkeypatch):
    monkeypatch.setattr(auth, "TOKEN_MEMO_MAX", 2)
    forged = tokens_for_user(tenant_admin.user)["access"][:-4] + "AAAA"
    with pytest.raises(AuthenticationFailed):
        authenticate(forged)
    assert forged not in auth._verified
    tokens = []
    for _ in range(3):
        token = AccessToken.for_user(tenant_admin.user)
        token["tenant_id"], token["ati_id"] = tenant_admin.tenant.pk, tenant_admin.tenant.signup_ati_token_id
        tokens.append(str(token))
        authenticate(tokens[-1])
    assert list(auth._verified) == tokens[1:]  # the least recently used went first


# --- sessions end on the metered path too ------------------------------------------------------------


def bearer(token: str) -> APIClient:
    client = GatewayClient()  # /v1 through the ASGI fast path, as uvicorn serves it
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def sign_in(username: str, password: str = PASSWORD) -> dict:
    response = APIClient().post("/api/auth/token/", {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db(transaction=True)
def test_a_password_change_ends_old_access_tokens_on_the_metered_path(tenant_admin):
    old = sign_in("acme-admin")
    assert bearer(old["access"]).post(URL, BODY, format="json").status_code == 200  # verified and cached
    changed = bearer(old["access"]).post(
        "/api/me/password/", {"current_password": PASSWORD, "new_password": "a-brand-new-passphrase-93"},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    assert_error(bearer(old["access"]).post(URL, BODY, format="json"), 401, "session_revoked")
    assert_error(APIClient().post("/api/auth/token/refresh/", {"refresh": old["refresh"]}, format="json"), 401,
                 "session_revoked")
    assert bearer(changed.json()["access"]).post(URL, BODY, format="json").status_code == 200
    fresh = sign_in("acme-admin", "a-brand-new-passphrase-93")
    assert bearer(fresh["access"]).post(URL, BODY, format="json").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_signing_a_user_out_everywhere_ends_their_tokens_on_the_metered_path(tenant_admin, member):
    old = sign_in("acme-member")
    assert bearer(old["access"]).post(URL, BODY, format="json").status_code == 200
    assert tenant_admin.client.post(f"/api/tenant/users/{member.user.pk}/sessions/revoke/").status_code == 204
    assert_error(bearer(old["access"]).post(URL, BODY, format="json"), 401, "session_revoked")
    assert tenant_admin.client.post(URL, BODY, format="json").status_code == 200
    assert bearer(sign_in("acme-member")["access"]).post(URL, BODY, format="json").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_session_check_adds_no_query_and_no_round_trip(tenant_admin, monkeypatch, django_assert_num_queries):
    token = sign_in("acme-admin")["access"]
    assert authenticate(token).user_id == tenant_admin.user.pk  # verified, identity cached
    round_trips = []
    real_get_many = cache.get_many
    monkeypatch.setattr(cache, "get_many", lambda keys, *a, **k: round_trips.append(keys) or real_get_many(keys))
    with django_assert_num_queries(0):
        assert authenticate(token).user_id == tenant_admin.user.pk
    assert len(round_trips) == 1
    # And the same token is refused at once when its session ends.
    services.user_sessions_revoke(user=tenant_admin.user)
    with pytest.raises(AuthenticationFailed) as refused:
        authenticate(token)
    assert refused.value.code == "session_revoked"
