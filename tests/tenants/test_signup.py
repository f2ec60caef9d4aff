"""POST /api/auth/signup/: an ATI token becomes a tenant, its first admin and its plan."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ATIToken, Tenant, User
from tests.conftest import PASSWORD, assert_error

SIGNUP = "/api/auth/signup/"


def signup_body(secret: str, **overrides) -> dict:
    body = {
        "ati_token": secret,
        "tenant_name": "Wayne Patents",
        "username": "wayne-admin",
        "email": "admin@wayne.example",
        "password": PASSWORD,
    }
    body.update(overrides)
    return body


def post_signup(body: dict, address: str = "203.0.113.7"):
    return APIClient().post(SIGNUP, body, format="json", REMOTE_ADDR=address)


def assert_nothing_created(issued: services.IssuedATIToken, username: str = "wayne-admin") -> None:
    token = ATIToken.objects.get(pk=issued.token.pk)
    assert token.tenant_id is None and token.used_at is None
    assert not Tenant.objects.filter(signup_ati_token_id=token.pk).exists()
    assert not User.objects.filter(username=username).exists()


# --- happy path ----------------------------------------------------------------------------------


def test_signup_creates_tenant_first_admin_and_uses_the_token(catalog):
    issued = services.ati_token_issue(plan_code="PRO")
    response = post_signup(signup_body(issued.secret))

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tenant"]["name"] == "Wayne Patents"
    assert body["tenant"]["plan"] == "PRO"
    assert body["user"]["username"] == "wayne-admin"
    assert body["user"]["role"] == "ADMIN"
    assert body["access"] and body["refresh"]
    assert "password" not in str(body)

    tenant = Tenant.objects.get(pk=body["tenant"]["id"])
    assert tenant.slug == body["tenant"]["slug"] == "wayne-patents"
    assert tenant.status == Tenant.Status.ACTIVE
    assert tenant.signup_ati_token_id == issued.token.pk
    assert tenant.plan_code == "PRO"

    token = ATIToken.objects.get(pk=issued.token.pk)
    assert token.tenant_id == tenant.pk
    assert token.used_at is not None
    assert token.status == ATIToken.Status.ACTIVE

    user = User.objects.get(pk=body["user"]["id"])
    assert user.tenant_id == tenant.pk
    assert user.role == User.Role.ADMIN
    assert user.email == "admin@wayne.example"
    assert user.check_password(PASSWORD)
    assert list(tenant.users.all()) == [user]

    # The tokens handed out at signup work straight away.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    me = client.get("/api/me/").json()
    assert me["tenant"]["id"] == tenant.pk
    assert me["plan"] == "PRO"
    assert me["role"] == "ADMIN"
    assert me["ati_id"] == issued.token.pk


def test_tenants_with_the_same_name_get_distinct_slugs(catalog):
    first = post_signup(signup_body(services.ati_token_issue(plan_code="PRO").secret))
    second = post_signup(signup_body(services.ati_token_issue(plan_code="PRO").secret, username="wayne-2"))
    assert first.status_code == second.status_code == 201
    assert first.json()["tenant"]["slug"] != second.json()["tenant"]["slug"]


# --- the plan comes from the ATI token ----------------------------------------------------------


@pytest.mark.parametrize("plan", ["FREE", "PRO", "ENTERPRISE"])
def test_plan_is_the_ati_tokens_plan_tier(catalog, plan):
    issued = services.ati_token_issue(plan_code=plan)
    # A client cannot choose its plan: an extra field is ignored.
    response = post_signup(signup_body(issued.secret, plan="ENTERPRISE" if plan != "ENTERPRISE" else "FREE"))
    assert response.status_code == 201, response.content
    assert response.json()["tenant"]["plan"] == plan
    assert Tenant.objects.get(pk=response.json()["tenant"]["id"]).plan_code == plan


def test_there_is_no_tenant_plan_field(catalog):
    field_names = {f.name for f in Tenant._meta.get_fields()}
    assert not {"plan", "plan_id", "plan_code", "plan_tier"} & field_names


def test_tenant_plan_follows_its_ati_token(catalog):
    issued = services.ati_token_issue(plan_code="FREE")
    body = post_signup(signup_body(issued.secret)).json()
    ATIToken.objects.filter(pk=issued.token.pk).update(plan_tier="ENTERPRISE")  # an upgrade by the super admin
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['access']}")
    assert client.get("/api/me/").json()["plan"] == "ENTERPRISE"


# --- refused ATI tokens ----------------------------------------------------------------------------


def test_used_token_cannot_be_reused(catalog):
    issued = services.ati_token_issue(plan_code="PRO")
    assert post_signup(signup_body(issued.secret)).status_code == 201
    again = post_signup(signup_body(issued.secret, tenant_name="Second Corp", username="second-admin"))
    assert_error(again, 400, "ati_token_used")
    assert Tenant.objects.count() == 1
    assert not User.objects.filter(username="second-admin").exists()
    assert not Tenant.objects.filter(name="Second Corp").exists()


def test_revoked_token_is_refused(catalog):
    issued = services.ati_token_issue(plan_code="PRO")
    services.ati_token_revoke(ati_id=issued.token.pk)
    assert_error(post_signup(signup_body(issued.secret)), 400, "ati_token_revoked")
    assert_nothing_created(issued)


def test_expired_token_is_refused(catalog):
    issued = services.ati_token_issue(plan_code="PRO", expires_days=30)
    ATIToken.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(post_signup(signup_body(issued.secret)), 400, "ati_token_expired")
    assert_nothing_created(issued)


def test_token_with_expiry_ahead_is_accepted(catalog):
    issued = services.ati_token_issue(plan_code="PRO", expires_days=30)
    assert post_signup(signup_body(issued.secret)).status_code == 201


@pytest.mark.parametrize(
    "secret_of",
    [
        lambda issued: "ati_secret_doesnotexist",
        lambda issued: issued.secret + "x",
        lambda issued: issued.secret.upper(),
        lambda issued: issued.token.pk,  # the public ATI id is not the secret
        lambda issued: issued.token.secret_hash,  # nor is the stored hash
    ],
    ids=["made-up", "extra-char", "wrong-case", "ati-id", "secret-hash"],
)
def test_unknown_token_is_refused(catalog, secret_of):
    issued = services.ati_token_issue(plan_code="PRO")
    assert_error(post_signup(signup_body(secret_of(issued))), 400, "ati_token_unknown")
    assert_nothing_created(issued)


def test_empty_token_is_a_validation_error(catalog):
    body = assert_error(post_signup(signup_body("")), 400, "validation_error")
    assert "ati_token" in body["error"]["details"]["fields"]


# --- refused users ------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["short", "12345678901234", "password123", "wayne-admin"])
def test_weak_password_is_refused_and_the_token_stays_usable(catalog, password):
    issued = services.ati_token_issue(plan_code="PRO")
    assert_error(post_signup(signup_body(issued.secret, password=password)), 400, "weak_password")
    assert_nothing_created(issued)
    assert post_signup(signup_body(issued.secret)).status_code == 201


@pytest.mark.parametrize("username", ["acme-admin", "ACME-Admin"])
def test_taken_username_is_refused_and_the_token_stays_usable(tenant_admin, username):
    issued = services.ati_token_issue(plan_code="PRO")
    assert_error(post_signup(signup_body(issued.secret, username=username)), 409, "username_taken")
    token = ATIToken.objects.get(pk=issued.token.pk)
    assert token.tenant_id is None and token.used_at is None
    assert Tenant.objects.count() == 1
    assert post_signup(signup_body(issued.secret, username="fresh-admin")).status_code == 201


def test_invalid_email_and_missing_fields_are_validation_errors(catalog):
    issued = services.ati_token_issue(plan_code="PRO")
    body = assert_error(post_signup({"ati_token": issued.secret, "email": "not-an-email"}), 400, "validation_error")
    assert {"tenant_name", "username", "email", "password"} <= set(body["error"]["details"]["fields"])
    assert_nothing_created(issued)


# --- brute-force protection ----------------------------------------------------------------------


def test_signup_attempts_are_throttled_per_address(catalog):
    limit = settings.GATEWAY_LOGIN_FAILURE_LIMIT
    issued = services.ati_token_issue(plan_code="PRO")
    for i in range(limit):
        guess = post_signup(signup_body(f"ati_secret_guess_{i}"), address="198.51.100.9")
        assert_error(guess, 400, "ati_token_unknown")

    refused = post_signup(signup_body("ati_secret_guess_last"), address="198.51.100.9")
    assert_error(refused, 429, "too_many_attempts")
    assert int(refused["Retry-After"]) > 0

    # Once throttled, even the right secret is refused from that address (that is the point) ...
    assert_error(post_signup(signup_body(issued.secret), address="198.51.100.9"), 429, "too_many_attempts")
    assert_nothing_created(issued)
    # ... while other addresses are unaffected.
    assert post_signup(signup_body(issued.secret), address="198.51.100.10").status_code == 201


def test_successful_signups_from_one_address_are_never_throttled(catalog):
    # An operator onboarding many tenants from one office: only failed ATI secrets count.
    for i in range(settings.GATEWAY_LOGIN_FAILURE_LIMIT + 1):
        issued = services.ati_token_issue(plan_code="PRO")
        body = signup_body(issued.secret, tenant_name=f"Tenant {i}", username=f"tenant-{i}-admin")
        assert post_signup(body, address="198.51.100.77").status_code == 201, i


def test_signup_mistakes_other_than_the_secret_do_not_count(catalog):
    issued = services.ati_token_issue(plan_code="PRO")
    for _ in range(settings.GATEWAY_LOGIN_FAILURE_LIMIT + 1):
        assert_error(post_signup(signup_body(issued.secret, password="short"), address="198.51.100.78"), 400,
                     "weak_password")
    assert post_signup(signup_body(issued.secret), address="198.51.100.78").status_code == 201


def test_signup_throttle_lifts_when_its_lockout_has_passed(catalog, settings):
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 2
    settings.GATEWAY_LOGIN_LOCKOUT_SECONDS = 2
    for i in range(2):
        assert_error(post_signup(signup_body(f"ati_secret_guess_{i}")), 400, "ati_token_unknown")
    refused = post_signup(signup_body("ati_secret_guess_2"))
    assert_error(refused, 429, "too_many_attempts")
    retry_after = int(refused["Retry-After"])
    assert 1 <= retry_after <= 2
    # Waiting as long as Retry-After says is enough: the lockout is the configured one,
    # not whatever default timeout the cache backend applies.
    time.sleep(retry_after + 0.5)
    assert_error(post_signup(signup_body("ati_secret_guess_3")), 400, "ati_token_unknown")
