"""POST /api/auth/token/ and /api/auth/token/refresh/: credentials in, claims out, brute force kept out."""

from __future__ import annotations

import jwt
import pytest
from django.conf import settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from tenants import services
from tenants.models import User
from tests.conftest import PASSWORD, assert_error

TOKEN = "/api/auth/token/"
REFRESH = "/api/auth/token/refresh/"
ME = "/api/me/"


def login(username: str, password: str = PASSWORD, address: str = "192.0.2.1"):
    return APIClient().post(TOKEN, {"username": username, "password": password}, format="json", REMOTE_ADDR=address)


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


# --- obtaining tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["tenant_admin", "member"])
def test_token_carries_sub_tenant_and_ati_claims_matching_the_database(request, persona):
    who = request.getfixturevalue(persona)
    response = login(who.user.username)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access", "refresh"}

    tenant = who.tenant
    for raw, token_type in ((body["access"], "access"), (body["refresh"], "refresh")):
        # Verified with the gateway's key and algorithm, not merely decoded.
        claims = jwt.decode(raw, settings.SIMPLE_JWT["SIGNING_KEY"], algorithms=["HS256"])
        assert claims["token_type"] == token_type
        assert claims["sub"] == str(who.user.pk)
        assert claims["tenant_id"] == tenant.pk
        assert claims["ati_id"] == tenant.signup_ati_token_id
        assert claims["exp"] > claims["iat"]

    me = bearer(body["access"]).get(ME)
    assert me.status_code == 200
    assert me.json()["user"]["id"] == who.user.pk


@pytest.mark.parametrize(
    "username, password",
    [("acme-admin", "wrong-password-entirely"), ("nobody-here", PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
def test_bad_credentials_are_refused(tenant_admin, username, password):
    response = login(username, password)
    body = assert_error(response, 401, "invalid_credentials")
    assert "access" not in response.content.decode()
    # The same answer for an unknown user and a wrong password: no username enumeration.
    assert body["error"]["message"] == "Wrong username or password."


def test_inactive_user_gets_no_token(tenant_admin, member):
    services.user_deactivate(user=member.user, actor=tenant_admin.user)
    assert_error(login("acme-member"), 401, "invalid_credentials")


def test_missing_fields_are_a_validation_error(catalog):
    body = assert_error(APIClient().post(TOKEN, {}, format="json"), 400, "validation_error")
    assert {"username", "password"} <= set(body["error"]["details"]["fields"])
    body = assert_error(login("acme-admin", ""), 400, "validation_error")
    assert "password" in body["error"]["details"]["fields"]


@pytest.mark.parametrize(
    "kwargs", [{"is_superuser": True, "is_staff": True}, {"is_staff": True}], ids=["super", "staff"]
)
def test_staff_without_tenant_gets_no_api_token(catalog, kwargs):
    User.objects.create_user("root", "root@example.com", "another-long-passphrase-77", **kwargs)
    response = login("root", "another-long-passphrase-77")
    assert_error(response, 403, "no_tenant")
    assert "access" not in response.content.decode()


# --- throttling ------------------------------------------------------------------------------------


def test_login_is_throttled_per_username_across_addresses(tenant_admin, member):
    limit = settings.AUTH_THROTTLE_ATTEMPTS
    for i in range(limit):
        # Different addresses, and the username in different letter cases: one counter.
        username = "acme-admin" if i % 2 else "ACME-ADMIN"
        assert_error(login(username, "wrong-guess", address=f"10.0.0.{i + 1}"), 401, "invalid_credentials")

    refused = login("acme-admin", PASSWORD, address="10.0.1.1")  # right password, fresh address
    assert_error(refused, 429, "too_many_attempts")
    assert int(refused["Retry-After"]) > 0
    assert "access" not in refused.content.decode()

    # Another user from one of the same addresses is not locked out.
    assert login("acme-member", PASSWORD, address="10.0.0.1").status_code == 200


def test_login_is_throttled_per_address_across_usernames(tenant_admin, member):
    limit = settings.AUTH_THROTTLE_ATTEMPTS
    for i in range(limit):
        assert_error(login(f"guess-{i}", "wrong-guess", address="10.9.9.9"), 401, "invalid_credentials")

    refused = login("acme-admin", PASSWORD, address="10.9.9.9")
    assert_error(refused, 429, "too_many_attempts")
    assert int(refused["Retry-After"]) > 0

    assert login("acme-admin", PASSWORD, address="10.9.9.10").status_code == 200


# --- refresh ---------------------------------------------------------------------------------------


def test_refresh_returns_a_working_access_token_with_the_same_claims(tenant_admin):
    tokens = login("acme-admin").json()
    response = APIClient().post(REFRESH, {"refresh": tokens["refresh"]}, format="json")
    assert response.status_code == 200, response.content
    access = response.json()["access"]
    claims = AccessToken(access)  # verifies signature, type and expiry
    original = AccessToken(tokens["access"])
    for name in ("sub", "tenant_id", "ati_id"):
        assert claims[name] == original[name]
    assert bearer(access).get(ME).status_code == 200


def test_refresh_is_refused_once_the_tenant_is_suspended(tenant_admin, django_capture_on_commit_callbacks):
    refresh = login("acme-admin").json()["refresh"]
    assert APIClient().post(REFRESH, {"refresh": refresh}, format="json").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_suspend(slug=tenant_admin.tenant.slug)
    response = APIClient().post(REFRESH, {"refresh": refresh}, format="json")
    assert_error(response, 403, "tenant_suspended")
    assert "access" not in response.json()


def test_refresh_is_refused_once_the_user_is_deactivated(tenant_admin, member, django_capture_on_commit_callbacks):
    refresh = login("acme-member").json()["refresh"]
    with django_capture_on_commit_callbacks(execute=True):
        services.user_deactivate(user=member.user, actor=tenant_admin.user)
    assert_error(APIClient().post(REFRESH, {"refresh": refresh}, format="json"), 401, "user_inactive")


def test_refresh_rejects_garbage_access_tokens_and_forgeries(tenant_admin):
    tokens = login("acme-admin").json()
    forged = jwt.encode(
        jwt.decode(tokens["refresh"], options={"verify_signature": False}), "some-other-key-" + "y" * 32,
        algorithm="HS256",
    )
    for candidate in ("garbage", tokens["access"], forged):
        assert_error(APIClient().post(REFRESH, {"refresh": candidate}, format="json"), 401, "token_not_valid")
    assert_error(APIClient().post(REFRESH, {}, format="json"), 400, "validation_error")


def test_refresh_token_without_tenant_claims_is_refused(tenant_admin):
    bare = RefreshToken.for_user(tenant_admin.user)  # signed by the gateway, but no tenant/ATI claims
    assert_error(APIClient().post(REFRESH, {"refresh": str(bare)}, format="json"), 401, "claims_missing")
