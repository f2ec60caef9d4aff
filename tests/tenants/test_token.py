"""POST /api/auth/token/ and /api/auth/token/refresh/: credentials in, claims out, brute force kept out."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from tenants import services
from tenants.models import ATIToken, User
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


# --- throttling: only failures count ------------------------------------------------------------


def fail(username: str, address: str = "192.0.2.1", **extra):
    return APIClient().post(
        TOKEN, {"username": username, "password": "wrong-guess"}, format="json", REMOTE_ADDR=address, **extra
    )


def test_successful_logins_from_one_address_never_lock_anyone(tenant_admin, member):
    # A whole office behind one NAT address signs in all day long.
    for i in range(2 * settings.GATEWAY_LOGIN_FAILURE_LIMIT + 1):
        username = "acme-admin" if i % 2 else "acme-member"
        assert login(username, address="203.0.113.50").status_code == 200, i
    assert login("acme-admin", address="203.0.113.50").status_code == 200


def test_failures_lock_only_that_username_across_addresses(tenant_admin, member):
    limit = settings.GATEWAY_LOGIN_FAILURE_LIMIT
    for i in range(limit):
        # Different addresses, and the username in different letter cases: one counter.
        username = "acme-admin" if i % 2 else "ACME-ADMIN"
        assert_error(fail(username, address=f"10.0.0.{i + 1}"), 401, "invalid_credentials")

    refused = login("acme-admin", PASSWORD, address="10.0.1.1")  # right password, fresh address
    assert_error(refused, 429, "too_many_attempts")
    assert 0 < int(refused["Retry-After"]) <= settings.GATEWAY_LOGIN_LOCKOUT_SECONDS
    assert "access" not in refused.content.decode()

    # Another user from one of the same addresses is not locked out, nor is that address.
    assert login("acme-member", PASSWORD, address="10.0.0.1").status_code == 200
    assert_error(fail("acme-member", address="10.0.0.1"), 401, "invalid_credentials")


def test_a_success_resets_the_usernames_failures(tenant_admin):
    limit = settings.GATEWAY_LOGIN_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert_error(fail("acme-admin"), 401, "invalid_credentials")
    assert login("acme-admin").status_code == 200
    for _ in range(limit - 1):
        assert_error(fail("acme-admin"), 401, "invalid_credentials")
    assert login("acme-admin").status_code == 200  # 2 * (limit - 1) failures, never limit in a row


def test_unknown_usernames_count_per_address(tenant_admin, member):
    limit = settings.GATEWAY_LOGIN_FAILURE_LIMIT
    for i in range(limit):
        assert_error(fail(f"guess-{i}", address="10.9.9.9"), 401, "invalid_credentials")

    # Every failure from that address is refused now, for known and unknown usernames alike
    # (a different answer for a known one would tell which usernames exist) ...
    for username in ("guess-next", "acme-admin"):
        refused = fail(username, address="10.9.9.9")
        assert_error(refused, 429, "too_many_attempts")
        assert int(refused["Retry-After"]) > 0
    # ... but the people behind it who know their password still sign in,
    assert login("acme-member", address="10.9.9.9").status_code == 200
    # and other addresses are not affected.
    assert_error(fail("guess-next", address="10.9.9.10"), 401, "invalid_credentials")


def test_wrong_passwords_of_known_users_do_not_lock_their_address(tenant_admin, member):
    limit = settings.GATEWAY_LOGIN_FAILURE_LIMIT
    for _ in range(limit):
        assert_error(fail("acme-admin", address="10.8.8.8"), 401, "invalid_credentials")
    assert_error(fail("acme-member", address="10.8.8.8"), 401, "invalid_credentials")
    assert_error(fail("someone-unknown", address="10.8.8.8"), 401, "invalid_credentials")
    assert login("acme-member", address="10.8.8.8").status_code == 200


def test_a_lockout_lifts_after_its_cooldown(tenant_admin, settings):
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 2
    settings.GATEWAY_LOGIN_LOCKOUT_SECONDS = 2
    for _ in range(2):
        assert_error(fail("acme-admin"), 401, "invalid_credentials")
    refused = login("acme-admin")
    assert_error(refused, 429, "too_many_attempts")
    retry_after = int(refused["Retry-After"])
    assert 1 <= retry_after <= 2
    time.sleep(retry_after + 0.5)
    assert login("acme-admin").status_code == 200
    # A fresh count after the lockout: one failure does not lock again.
    assert_error(fail("acme-admin"), 401, "invalid_credentials")
    assert login("acme-admin").status_code == 200


# --- the client address: REMOTE_ADDR, or X-Forwarded-For through trusted proxies only ---------------


def lock_address(address: str, limit: int, **extra) -> None:
    for i in range(limit):
        assert_error(fail(f"nobody-{i}", address=address, **extra), 401, "invalid_credentials")


def test_without_trusted_proxies_a_forged_forwarded_for_changes_nothing(tenant_admin, settings):
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 2
    assert settings.GATEWAY_TRUSTED_PROXY_COUNT == 0  # the default
    # Forging a new X-Forwarded-For on every try does not escape the address's lockout ...
    lock_address("198.51.100.20", 2, HTTP_X_FORWARDED_FOR="192.0.2.100")
    assert_error(fail("nobody-x", address="198.51.100.20", HTTP_X_FORWARDED_FOR="192.0.2.101"), 429,
                 "too_many_attempts")
    # ... and does not lock the address it names.
    assert_error(fail("nobody-y", address="192.0.2.100"), 401, "invalid_credentials")


def test_with_one_trusted_proxy_the_address_it_saw_is_the_client(tenant_admin, settings):
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 2
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 1
    balancer = "10.0.0.2"  # every request arrives from the load balancer
    lock_address(balancer, 2, HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert_error(fail("nobody-x", address=balancer, HTTP_X_FORWARDED_FOR="198.51.100.1"), 429, "too_many_attempts")
    # Another client behind the same balancer is not locked out.
    assert_error(fail("nobody-x", address=balancer, HTTP_X_FORWARDED_FOR="198.51.100.2"), 401, "invalid_credentials")
    # What the locked client prepends itself is ignored: the balancer appended its real address.
    spoofed = fail("nobody-x", address=balancer, HTTP_X_FORWARDED_FOR="198.51.100.2, 198.51.100.1")
    assert_error(spoofed, 429, "too_many_attempts")


def test_with_two_trusted_proxies_the_second_address_from_the_right_is_the_client(tenant_admin, settings):
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 2
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 2
    inner = "10.0.0.3"
    # forged-by-client, client (written by the outer proxy), outer proxy (written by the inner one)
    lock_address(inner, 2, HTTP_X_FORWARDED_FOR="192.0.2.7, 198.51.100.30, 10.0.0.4")
    assert_error(fail("nobody-x", address=inner, HTTP_X_FORWARDED_FOR="192.0.2.8, 198.51.100.30, 10.0.0.4"), 429,
                 "too_many_attempts")
    assert_error(fail("nobody-x", address=inner, HTTP_X_FORWARDED_FOR="198.51.100.31, 10.0.0.4"), 401,
                 "invalid_credentials")


def test_a_forwarded_for_shorter_than_the_trusted_chain_is_not_believed(tenant_admin, settings):
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 2
    settings.GATEWAY_TRUSTED_PROXY_COUNT = 2
    # One entry where two proxies should have written two: it did not come through them, so the
    # client's own address (REMOTE_ADDR) counts, whatever the header claims.
    lock_address("198.51.100.40", 2, HTTP_X_FORWARDED_FOR="192.0.2.50")
    assert_error(fail("nobody-x", address="198.51.100.40", HTTP_X_FORWARDED_FOR="192.0.2.51"), 429,
                 "too_many_attempts")
    assert_error(fail("nobody-x", address="192.0.2.50"), 401, "invalid_credentials")


# --- the chain is checked at login, not only at use ------------------------------------------------


def test_login_is_refused_for_a_suspended_tenant(tenant_admin, member):
    services.tenant_suspend(slug=tenant_admin.tenant.slug)
    for username in ("acme-admin", "acme-member"):
        response = login(username)
        assert_error(response, 403, "tenant_suspended")
        assert "access" not in response.content.decode()
    services.tenant_activate(slug=tenant_admin.tenant.slug)
    assert login("acme-member").status_code == 200


def test_login_is_refused_once_the_tenants_ati_token_is_revoked(tenant_admin):
    services.ati_token_revoke(ati_id=tenant_admin.tenant.signup_ati_token_id)
    response = login("acme-admin")
    assert_error(response, 403, "ati_token_revoked")
    assert "access" not in response.content.decode()


def test_login_is_refused_once_the_tenants_ati_token_has_expired(tenant_admin):
    ATIToken.objects.filter(pk=tenant_admin.tenant.signup_ati_token_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert_error(login("acme-admin"), 403, "ati_token_expired")


def test_a_refused_tenant_login_is_never_a_password_oracle_for_strangers(tenant_admin):
    # The refusal comes only after the password was right: a wrong one is still the plain 401.
    services.tenant_suspend(slug=tenant_admin.tenant.slug)
    assert_error(fail("acme-admin"), 401, "invalid_credentials")


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
