"""Every way the chain JWT -> user -> tenant -> ATI token -> plan can break, and that each break is refused.

Signup-time ATI failures (unknown, used, revoked, expired secret) live in test_signup.py; here the
ATI token belongs to an existing tenant and is checked on every API call.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from tenants import services
from tenants.models import ATIToken, Tenant, User
from tenants.tokens import tokens_for_user
from tests.conftest import assert_error

ME = "/api/me/"
DROP = object()


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def crafted_access(user: User, **claims) -> str:
    """A correctly signed access token for `user` with the genuine claims, then `claims` applied on top."""
    token = AccessToken.for_user(user)
    token["tenant_id"] = user.tenant_id
    token["ati_id"] = user.tenant.signup_ati_token_id if user.tenant_id else None
    for name, value in claims.items():
        if value is DROP:
            del token[name]
        else:
            token[name] = value
    return str(token)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(raw: str) -> dict:
    return jwt.decode(raw, options={"verify_signature": False})


# --- the happy path the failures are measured against ----------------------------------------


def test_crafted_token_with_genuine_claims_is_accepted(tenant_admin):
    # So that every refusal below is caused by the one claim each test changes.
    response = bearer(crafted_access(tenant_admin.user)).get(ME)
    assert response.status_code == 200
    assert response.json()["tenant"]["id"] == tenant_admin.tenant.pk


# --- ATI token of an existing tenant ---------------------------------------------------------


def test_revoked_ati_token_refuses_the_tenants_next_call(tenant_admin, member, django_capture_on_commit_callbacks):
    admin_client, member_client = tenant_admin.client, member.client
    assert admin_client.get(ME).status_code == 200  # identity now cached
    with django_capture_on_commit_callbacks(execute=True):
        services.ati_token_revoke(ati_id=tenant_admin.tenant.signup_ati_token_id)
    assert_error(admin_client.get(ME), 403, "ati_token_revoked")
    assert_error(member_client.get(ME), 403, "ati_token_revoked")
    # Nor can a refresh token mint a new access token.
    refresh = tokens_for_user(tenant_admin.user)["refresh"]
    assert_error(APIClient().post("/api/auth/token/refresh/", {"refresh": refresh}), 403, "ati_token_revoked")


def test_revoking_one_tenants_token_leaves_other_tenants_alone(
    tenant_admin, outsider, django_capture_on_commit_callbacks
):
    outsider_client = outsider.client
    assert outsider_client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.ati_token_revoke(ati_id=tenant_admin.tenant.signup_ati_token_id)
    assert outsider_client.get(ME).status_code == 200


def test_expired_ati_token_is_refused(tenant_admin):
    ATIToken.objects.filter(pk=tenant_admin.tenant.signup_ati_token_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert_error(tenant_admin.client.get(ME), 403, "ati_token_expired")


def test_ati_token_expiring_while_identity_is_cached_is_refused(tenant_admin, monkeypatch, django_assert_num_queries):
    now = timezone.now()
    ATIToken.objects.filter(pk=tenant_admin.tenant.signup_ati_token_id).update(expires_at=now + timedelta(hours=1))
    client = tenant_admin.client
    assert client.get(ME).status_code == 200
    with django_assert_num_queries(0):  # served from the identity cache
        assert client.get(ME).status_code == 200
    # Two hours later the access token is still unexpired (fresh JWTs live 30 minutes of real time),
    # but the ATI token is not: the cached identity must not outlive it.
    monkeypatch.setattr(timezone, "now", lambda: now + timedelta(hours=2))
    assert_error(client.get(ME), 403, "ati_token_expired")


def test_ati_token_revoked_by_a_row_edit_is_refused(tenant_admin, django_capture_on_commit_callbacks):
    """Row edits (the Django admin's change form) go through services.ati_token_save: the cache follows."""
    client = tenant_admin.client
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        token = ATIToken.objects.get(pk=tenant_admin.tenant.signup_ati_token_id)
        token.status = ATIToken.Status.REVOKED
        services.ati_token_save(token=token)
    assert_error(client.get(ME), 403, "ati_token_revoked")


# --- tenant ------------------------------------------------------------------------------------


def test_suspended_tenant_is_refused_and_reactivation_restores_access(
    tenant_admin, member, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_suspend(slug=tenant_admin.tenant.slug)
    assert_error(tenant_admin.client.get(ME), 403, "tenant_suspended")
    assert_error(member.client.get(ME), 403, "tenant_suspended")
    with django_capture_on_commit_callbacks(execute=True):
        services.tenant_activate(slug=tenant_admin.tenant.slug)
    assert tenant_admin.client.get(ME).status_code == 200


def test_suspension_invalidates_the_cached_identity(
    tenant_admin, outsider, django_capture_on_commit_callbacks, django_assert_num_queries
):
    client, outsider_client = tenant_admin.client, outsider.client
    assert client.get(ME).status_code == 200
    assert outsider_client.get(ME).status_code == 200
    with django_assert_num_queries(0):  # proves the identity really is cached
        assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.tenant_suspend(slug=tenant_admin.tenant.slug)
    assert callbacks, "invalidation is expected to run on commit"
    assert_error(client.get(ME), 403, "tenant_suspended")
    assert outsider_client.get(ME).status_code == 200  # other tenants keep their cache and access


@pytest.mark.django_db(transaction=True)
def test_suspension_invalidates_the_cache_on_a_real_commit(django_assert_num_queries):
    from django.core.management import call_command

    from tests.conftest import make_tenant

    call_command("seed_catalog", verbosity=0)
    tenant, admin = make_tenant("Initech", "initech-admin")
    client = bearer(tokens_for_user(admin)["access"])
    assert client.get(ME).status_code == 200
    with django_assert_num_queries(0):
        assert client.get(ME).status_code == 200
    services.tenant_suspend(slug=tenant.slug)  # commits for real; on_commit fires
    assert_error(client.get(ME), 403, "tenant_suspended")


def test_tenant_suspended_by_a_row_edit_is_refused(tenant_admin, django_capture_on_commit_callbacks):
    client = tenant_admin.client
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tenant = Tenant.objects.get(pk=tenant_admin.tenant.pk)
        tenant.status = Tenant.Status.SUSPENDED
        services.tenant_save(tenant=tenant)
    assert_error(client.get(ME), 403, "tenant_suspended")


# --- user ----------------------------------------------------------------------------------------


def test_user_moved_to_another_tenant_is_refused(member, outsider):
    client = member.client  # token minted while the user belonged to Acme
    User.objects.filter(pk=member.user.pk).update(tenant=outsider.tenant)
    assert_error(client.get(ME), 401, "tenant_mismatch")


def test_user_moved_while_identity_is_cached_is_refused(member, outsider, django_capture_on_commit_callbacks):
    client = member.client
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        user = User.objects.get(pk=member.user.pk)
        user.tenant = outsider.tenant
        services.user_save(user=user)
    assert_error(client.get(ME), 401, "tenant_mismatch")


def test_deactivated_user_is_refused(tenant_admin, member, django_capture_on_commit_callbacks):
    client = member.client
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.user_deactivate(user=member.user, actor=tenant_admin.user)
    assert_error(client.get(ME), 401, "user_inactive")


def test_user_deactivated_by_a_plain_model_save_is_refused(member, django_capture_on_commit_callbacks):
    client = member.client
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        user = User.objects.get(pk=member.user.pk)
        user.is_active = False
        user.save()
    assert_error(client.get(ME), 401, "user_inactive")


def test_deleted_user_is_refused(member, django_capture_on_commit_callbacks):
    client = member.client
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        services.user_delete(user=User.objects.get(pk=member.user.pk))
    assert_error(client.get(ME), 401, "user_inactive")


# --- claims that disagree with the database ------------------------------------------------------


@pytest.mark.parametrize(
    "claims_of, expected_status, expected_code",
    [
        # My user and tenant, but the ATI id of another tenant.
        (lambda me, other: {"ati_id": other.tenant.signup_ati_token_id}, 401, "ati_token_mismatch"),
        # My user and ATI id, but another tenant's id.
        (lambda me, other: {"tenant_id": other.tenant.pk}, 401, "tenant_mismatch"),
        # Another tenant's id and ATI id, consistent with each other, but not with my user.
        (
            lambda me, other: {"tenant_id": other.tenant.pk, "ati_id": other.tenant.signup_ati_token_id},
            401,
            "tenant_mismatch",
        ),
        # Another tenant's user with my tenant's claims.
        (lambda me, other: {"sub": str(other.user.pk)}, 401, "tenant_mismatch"),
        # An ATI id that does not exist at all.
        (lambda me, other: {"ati_id": "ati_doesnotexist"}, 401, "ati_token_mismatch"),
        # A tenant that does not exist.
        (lambda me, other: {"tenant_id": 987654}, 401, "tenant_mismatch"),
        # A user that does not exist.
        (lambda me, other: {"sub": "987654"}, 401, "user_inactive"),
    ],
    ids=["foreign-ati", "foreign-tenant", "foreign-tenant-and-ati", "foreign-user", "unknown-ati",
         "unknown-tenant", "unknown-user"],
)
def test_claims_that_disagree_with_the_database_are_refused(
    tenant_admin, outsider, claims_of, expected_status, expected_code
):
    raw = crafted_access(tenant_admin.user, **claims_of(tenant_admin, outsider))
    body = assert_error(bearer(raw).get(ME), expected_status, expected_code)
    # Never a fallback to some other identity, never another tenant's data.
    assert outsider.tenant.slug not in json.dumps(body)


def test_rejected_claims_do_not_poison_the_cache_for_the_genuine_token(tenant_admin, outsider):
    forged = crafted_access(tenant_admin.user, ati_id=outsider.tenant.signup_ati_token_id)
    assert_error(bearer(forged).get(ME), 401, "ati_token_mismatch")
    assert tenant_admin.client.get(ME).status_code == 200
    assert_error(bearer(forged).get(ME), 401, "ati_token_mismatch")


def test_super_admin_with_tenant_claims_is_refused(catalog, tenant_admin):
    root = User.objects.create_superuser("root", "root@example.com", "another-long-passphrase-77")
    raw = crafted_access(root, tenant_id=tenant_admin.tenant.pk, ati_id=tenant_admin.tenant.signup_ati_token_id)
    assert_error(bearer(raw).get(ME), 403, "no_tenant")


@pytest.mark.parametrize(
    "claims",
    [
        {"tenant_id": DROP},
        {"ati_id": DROP},
        {"tenant_id": DROP, "ati_id": DROP},
        {"tenant_id": None},
        {"ati_id": ""},
        {"sub": DROP},
        {"sub": "not-a-number"},
    ],
    ids=["no-tenant", "no-ati", "neither", "null-tenant", "empty-ati", "no-sub", "bad-sub"],
)
def test_missing_claims_are_refused(tenant_admin, claims):
    assert_error(bearer(crafted_access(tenant_admin.user, **claims)).get(ME), 401, "claims_missing")


def test_super_admin_token_without_tenant_claims_is_refused(catalog):
    root = User.objects.create_superuser("root", "root@example.com", "another-long-passphrase-77")
    assert_error(bearer(tokens_for_user(root)["access"]).get(ME), 401, "claims_missing")


# --- the JWT itself --------------------------------------------------------------------------------


def test_forged_signature_is_refused(tenant_admin):
    genuine = tokens_for_user(tenant_admin.user)["access"]
    payload = _payload(genuine)  # every claim genuine; only the key is wrong
    forged = jwt.encode(payload, "not-the-gateway-signing-key-" + "x" * 32, algorithm="HS256")
    assert forged != genuine
    assert_error(bearer(forged).get(ME), 401, "token_not_valid")


def test_tampered_payload_with_the_original_signature_is_refused(tenant_admin, outsider):
    header, _, signature = tokens_for_user(tenant_admin.user)["access"].split(".")
    payload = _payload(tokens_for_user(tenant_admin.user)["access"])
    payload["tenant_id"] = outsider.tenant.pk
    payload["ati_id"] = outsider.tenant.signup_ati_token_id
    payload["sub"] = str(outsider.user.pk)
    tampered = ".".join([header, _b64(json.dumps(payload).encode()), signature])
    assert_error(bearer(tampered).get(ME), 401, "token_not_valid")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_token_is_refused(tenant_admin, alg):
    payload = _payload(tokens_for_user(tenant_admin.user)["access"])
    header = {"alg": alg, "typ": "JWT"}
    for signature in ("", _b64(b"anything")):
        unsigned = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{signature}"
        assert_error(bearer(unsigned).get(ME), 401, "token_not_valid")


def test_token_signed_with_another_algorithm_is_refused(tenant_admin):
    payload = _payload(tokens_for_user(tenant_admin.user)["access"])
    # Same secret, different HMAC: only the configured algorithm is accepted.
    other = jwt.encode(payload, settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS512")
    assert_error(bearer(other).get(ME), 401, "token_not_valid")


def test_expired_access_token_is_refused(tenant_admin):
    token = AccessToken.for_user(tenant_admin.user)
    token["tenant_id"] = tenant_admin.tenant.pk
    token["ati_id"] = tenant_admin.tenant.signup_ati_token_id
    token.set_exp(from_time=timezone.now() - timedelta(hours=1), lifetime=timedelta(minutes=30))
    assert_error(bearer(str(token)).get(ME), 401, "token_not_valid")


def test_refresh_token_is_not_accepted_as_an_access_token(tenant_admin):
    refresh = tokens_for_user(tenant_admin.user)["refresh"]
    assert_error(bearer(refresh).get(ME), 401, "token_not_valid")


@pytest.mark.parametrize(
    "header, expected_code",
    [
        ("Bearer garbage", "token_not_valid"),
        ("Bearer a.b.c", "token_not_valid"),
        ("Bearer " + "x" * 5000, "token_not_valid"),
        ("Bearer", "authentication_failed"),
        ("Bearer two tokens", "authentication_failed"),
        ("Basic dXNlcjpwYXNz", "not_authenticated"),
        ("Token abcdef", "not_authenticated"),
        ("", "not_authenticated"),
    ],
    ids=["garbage", "three-garbage-parts", "huge", "no-token", "two-tokens", "basic", "other-scheme", "empty"],
)
def test_garbage_authorization_header_is_refused(catalog, header, expected_code):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(client.get(ME), 401, expected_code)
