"""External identity (issue 13 §1): JWTs signed by the product's own identity service, verified against
its JWKS (RS256, a loopback IdP) or a shared HS256 secret, with `sub`, `tenant_id` and `ati_id` mapped
exactly as the gateway's own tokens are: unknown or mismatched claims are refused, on /api/ and /v1."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from rest_framework.test import APIClient

from llm import auth as v1_auth
from tenants import external_jwt
from tenants import services as tenant_services
from tests.asgi_client import GatewayClient
from tests.conftest import assert_error
from tests.fakes.oidc_fake import FakeIdP

ME = "/api/me/"
AUDIENCE = "llm-gateway"
CHAT = "/v1/LLM2_DRAFT/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Describe a hinge"}], "max_tokens": 20}


@pytest.fixture
def idp(settings):
    with FakeIdP() as server:
        settings.EXTERNAL_JWT_ISSUER = server.url
        settings.EXTERNAL_JWT_AUDIENCE = AUDIENCE
        settings.EXTERNAL_JWT_JWKS_URL = server.url + "/jwks"
        external_jwt.external_clients_clear()
        v1_auth.token_memo_clear()
        yield server
    external_jwt.external_clients_clear()
    v1_auth.token_memo_clear()


def claims_for(persona, **overrides) -> dict:
    now = int(time.time())
    return {"iss": overrides.pop("iss", None) or "", "aud": AUDIENCE, "iat": now, "exp": now + 300,
            "sub": str(persona.user.pk), "tenant_id": persona.tenant.pk,
            "ati_id": persona.tenant.signup_ati_token_id, **overrides}


def signed(idp: FakeIdP, claims: dict, *, key=None) -> str:
    claims = {**claims, "iss": claims.get("iss") or idp.url}
    return jwt.encode(claims, key or idp._key, algorithm="RS256", headers={"kid": idp.kid})


def me(token: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.get(ME)


def test_an_identity_service_token_is_mapped_like_the_gateways_own(idp, tenant_admin, member):
    response = me(signed(idp, claims_for(member)))
    assert response.status_code == 200, response.content
    assert response.json()["user"]["username"] == member.user.username
    chat = GatewayClient().post(CHAT, BODY, format="json",
                                HTTP_AUTHORIZATION=f"Bearer {signed(idp, claims_for(tenant_admin))}")
    assert chat.status_code == 200, chat.content
    assert idp.count("/jwks") >= 1  # verified against the identity service's published key


@pytest.mark.parametrize("tamper, status, code", [
    ({"aud": "another-service"}, 401, "token_not_valid"),
    ({"exp": int(time.time()) - 3600}, 401, "token_not_valid"),
    ({"sub": "999999"}, 401, "user_inactive"),
    ({"tenant_id": None}, 401, "claims_missing"),
    ({"ati_id": "ati_not_this_tenants"}, 401, "ati_token_mismatch"),
], ids=["audience", "expired", "unknown-user", "no-tenant", "wrong-ati"])
def test_bad_or_mismatched_claims_are_refused(idp, tenant_admin, tamper, status, code):
    assert_error(me(signed(idp, claims_for(tenant_admin, **tamper))), status, code)


def test_a_token_of_another_tenant_for_this_user_is_refused(idp, tenant_admin, outsider):
    token = signed(idp, claims_for(tenant_admin, tenant_id=outsider.tenant.pk,
                                   ati_id=outsider.tenant.signup_ati_token_id))
    assert_error(me(token), 401, "tenant_mismatch")
    assert_error(GatewayClient().post(CHAT, BODY, format="json", HTTP_AUTHORIZATION=f"Bearer {token}"), 401,
                 "tenant_mismatch")


def test_a_forged_signature_is_refused(idp, tenant_admin):
    forged = signed(idp, claims_for(tenant_admin), key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert_error(me(forged), 401, "token_not_valid")
    assert_error(GatewayClient().post(CHAT, BODY, format="json", HTTP_AUTHORIZATION=f"Bearer {forged}"), 401,
                 "token_not_valid")


def test_suspension_applies_to_external_tokens(idp, tenant_admin, django_capture_on_commit_callbacks):
    token = signed(idp, claims_for(tenant_admin))
    assert me(token).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.tenant_suspend(slug=tenant_admin.tenant.slug)
    assert_error(me(token), 403, "tenant_suspended")


def test_hs256_shared_secret(settings, tenant_admin):
    settings.EXTERNAL_JWT_ISSUER, settings.EXTERNAL_JWT_AUDIENCE = "https://id.example.com", AUDIENCE
    settings.EXTERNAL_JWT_JWKS_URL, settings.EXTERNAL_JWT_HS256_SECRET = "", "s3cret-shared-with-the-product-0123456789"
    claims = claims_for(tenant_admin, iss="https://id.example.com")
    good = jwt.encode(claims, settings.EXTERNAL_JWT_HS256_SECRET, algorithm="HS256")
    assert me(good).status_code == 200
    bad = jwt.encode(claims, "another-secret-entirely-0123456789abcdef", algorithm="HS256")
    assert_error(me(bad), 401, "token_not_valid")


def test_off_unless_configured(tenant_admin):
    # No issuer configured: such a token is just an invalid gateway token.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims_for(tenant_admin, iss="https://id.example.com"), key, algorithm="RS256")
    assert_error(me(token), 401, "token_not_valid")
