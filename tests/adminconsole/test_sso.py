"""Staff single sign-on: the whole OIDC authorization code flow against a loopback identity provider
(tests/fakes/oidc_fake.py: discovery, /authorize, /token, /userinfo, /jwks with an RS256 key).

The Django test client starts the sign-in (/oidc/authenticate/), a plain HTTP client follows the redirect
to the provider's /authorize (which approves at once and redirects back with code + state), and the test
client calls the callback: the gateway exchanges the code, verifies the ID token and maps the groups.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.hashers import is_password_usable
from django.test import Client, override_settings

from adminconsole import sso
from adminconsole.models import SSOIdentity
from tenants.models import User
from tests.adminconsole.conftest import messages_of
from tests.conftest import PASSWORD
from tests.fakes.oidc_fake import FakeIdP

pytestmark = pytest.mark.django_db

ADMINS, OPS = "gw-admins", "gw-ops"


@pytest.fixture
def idp():
    sso.discovery_clear()
    with FakeIdP() as fake:
        with override_settings(OIDC_ISSUER=fake.url, OIDC_RP_CLIENT_ID=fake.client_id,
                               OIDC_RP_CLIENT_SECRET=fake.client_secret, OIDC_SUPERUSER_GROUPS=[ADMINS],
                               OIDC_STAFF_GROUPS=[OPS], OIDC_STAFF_EMAIL_DOMAINS=["staff.example.com"]):
            yield fake
    sso.discovery_clear()


def sign_in(client: Client, idp: FakeIdP, next_url: str = "/console/"):
    """Run the browser's part of the code flow; return the gateway's answer to the callback."""
    start = client.get("/oidc/authenticate/", {"next": next_url})
    assert start.status_code == 302, start
    authorize = urlsplit(start["Location"])
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{idp.url}/authorize"
    params = parse_qs(authorize.query)
    assert params["client_id"] == [idp.client_id] and "openid" in params["scope"][0].split()
    assert params["nonce"] and params["state"] and params["code_challenge_method"] == ["S256"]
    back = httpx.get(start["Location"], follow_redirects=False, timeout=5)
    assert back.status_code == 302, back.text
    callback = urlsplit(back.headers["Location"])
    assert (callback.netloc, callback.path) == ("testserver", "/oidc/callback/")
    return client.get(f"{callback.path}?{callback.query}")


def assert_refused(client: Client, response, *, text: str | None = None) -> None:
    assert response.status_code == 302 and response["Location"] == "/admin/login/"
    page = client.get("/admin/login/")
    notes = messages_of(page)
    assert notes, "the login page says why"
    if text:
        assert any(text in note for note in notes), notes
    assert client.get("/console/").status_code == 302
    assert client.get("/admin/").status_code == 302


def test_the_login_page_offers_sso_only_when_it_is_configured(client):
    page = client.get("/admin/login/?next=/console/")
    assert page.status_code == 200 and b"/oidc/authenticate/" not in page.content
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_the_login_page_links_to_sso(client, idp):
    page = client.get("/admin/login/?next=/console/tenants/")
    assert page.status_code == 200
    assert b'href="/oidc/authenticate/?next=%2Fconsole%2Ftenants%2F"' in page.content
    assert b'id="id_password"' in page.content  # break-glass password logins stay by default


def test_superuser_group_gets_a_super_admin_session_for_console_and_admin(client, idp):
    idp.sign_in_as("idp-user-1", "ada@corp.example", [ADMINS, "engineering"])
    response = sign_in(client, idp, next_url="/console/tenants/")
    assert response.status_code == 302 and response["Location"] == "/console/tenants/"
    assert client.get("/console/").status_code == 200
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/tenants/user/").status_code == 200  # a super admin's admin page

    user = User.objects.get(sso_identity__subject="idp-user-1")
    assert user.is_staff and user.is_superuser and user.is_active
    assert user.tenant_id is None and user.email == "ada@corp.example"
    assert not is_password_usable(user.password)
    assert SSOIdentity.objects.get(user=user).issuer == idp.url
    # Every endpoint was used; the discovery document was fetched once and kept.
    assert idp.count("/token") == idp.count("/userinfo") == idp.count("/jwks") == 1
    sign_in(Client(), idp)
    assert idp.count("/.well-known/openid-configuration") == 1
    assert User.objects.filter(sso_identity__subject="idp-user-1").count() == 1  # the same account again


def test_staff_group_gets_read_only_staff(client, idp, tenant_admin):
    idp.sign_in_as("idp-user-2", "bob@corp.example", [OPS])
    assert sign_in(client, idp)["Location"] == "/console/"
    assert client.get("/console/").status_code == 200
    user = User.objects.get(sso_identity__subject="idp-user-2")
    assert user.is_staff and not user.is_superuser
    write = client.post(f"/console/tenants/{tenant_admin.tenant.slug}/", {"action": "mode", "mode": "SOFT"})
    assert write.status_code == 403


def test_a_verified_address_in_a_staff_domain_gets_staff(client, idp):
    idp.sign_in_as("idp-user-3", "carol@Staff.Example.com", ["engineering"])
    assert sign_in(client, idp)["Location"] == "/console/"
    assert client.get("/console/").status_code == 200
    assert not User.objects.get(sso_identity__subject="idp-user-3").is_superuser


def test_an_unverified_address_in_a_staff_domain_is_refused(client, idp):
    idp.sign_in_as("idp-user-4", "dave@staff.example.com", [], email_verified=False)
    assert_refused(client, sign_in(client, idp), text="no staff access")
    assert not User.objects.filter(email="dave@staff.example.com").exists()


@pytest.mark.parametrize("groups,email", [(["engineering"], "eve@corp.example"), ([], "eve@staff.example.com.evil"),
                                          (["gw-admins-not"], "eve@example.com")])
def test_wrong_group_or_domain_is_refused_and_gets_no_account(client, idp, groups, email):
    idp.sign_in_as("idp-outsider", email, groups)
    assert_refused(client, sign_in(client, idp), text="no staff access")
    assert not User.objects.filter(email=email).exists()
    assert not SSOIdentity.objects.exists()


def test_someone_who_leaves_the_staff_group_is_deactivated(idp):
    idp.sign_in_as("idp-user-5", "frank@corp.example", [ADMINS])
    first = Client()
    sign_in(first, idp)
    assert first.get("/console/").status_code == 200
    idp.sign_in_as("idp-user-5", "frank@corp.example", ["engineering"])
    second = Client()
    assert_refused(second, sign_in(second, idp))
    assert not User.objects.get(sso_identity__subject="idp-user-5").is_active
    assert first.get("/console/").status_code == 302  # the old session ends too
    idp.sign_in_as("idp-user-5", "frank@corp.example", [OPS])  # back in a staff group: active again, as staff
    third = Client()
    sign_in(third, idp)
    assert third.get("/console/").status_code == 200
    user = User.objects.get(sso_identity__subject="idp-user-5")
    assert user.is_active and user.is_staff and not user.is_superuser


@pytest.mark.parametrize("tamper", ["signature", "audience", "nonce", "issuer", "expired"])
def test_an_id_token_that_does_not_verify_is_refused(client, idp, tamper):
    idp.sign_in_as("idp-user-6", "grace@corp.example", [ADMINS])
    idp.tamper_next(tamper)
    assert_refused(client, sign_in(client, idp), text="could not be verified")
    assert not User.objects.filter(email="grace@corp.example").exists()


def test_a_callback_with_a_state_this_browser_never_started_is_refused(client, idp):
    client.get("/oidc/authenticate/")  # the session holds a state, not this one
    response = client.get("/oidc/callback/?code=stolen&state=forged-state")
    assert_refused(client, response, text="unknown state")
    assert idp.count("/token") == 0


def test_sso_never_takes_over_an_account_by_its_email(client, idp, superuser, member):
    """The provider's address matches a password super admin's and a tenant member's: SSO makes its own user."""
    member.user.email = "root@example.com"
    member.user.save()
    idp.sign_in_as("idp-user-7", "root@example.com", [OPS])
    sign_in(client, idp)
    user = User.objects.get(sso_identity__subject="idp-user-7")
    assert user.pk not in {superuser.pk, member.user.pk} and user.tenant_id is None
    member.user.refresh_from_db()
    superuser.refresh_from_db()
    assert not member.user.is_staff and superuser.is_superuser
    assert client.get("/console/").context["request"].user.pk == user.pk


def test_password_logins_of_staff_can_be_switched_off(client, idp, superuser):
    password_session = Client()
    password_session.force_login(superuser)
    assert password_session.get("/console/").status_code == 200
    with override_settings(OIDC_STAFF_PASSWORD_LOGIN=False):
        page = client.get("/admin/login/")
        assert b"/oidc/authenticate/" in page.content and b'id="id_password"' not in page.content
        refused = client.post("/admin/login/?next=/console/", {"username": "root-admin", "password": "x-Very-long-42"})
        assert refused.status_code == 200 and b"single sign-on" in refused.content
        assert client.get("/console/").status_code == 302
        assert password_session.get("/console/").status_code == 302  # an earlier password session ends
        idp.sign_in_as("idp-user-8", "heidi@corp.example", [ADMINS])
        sign_in(client, idp)
        assert client.get("/console/").status_code == 200


def test_explicit_endpoints_need_no_discovery(client, idp):
    with override_settings(OIDC_OP_AUTHORIZATION_ENDPOINT=f"{idp.url}/authorize",
                           OIDC_OP_TOKEN_ENDPOINT=f"{idp.url}/token", OIDC_OP_USER_ENDPOINT=f"{idp.url}/userinfo",
                           OIDC_OP_JWKS_ENDPOINT=f"{idp.url}/jwks"):
        idp.sign_in_as("idp-user-9", "ivan@corp.example", [ADMINS])
        sign_in(client, idp)
        assert client.get("/console/").status_code == 200
    assert idp.count("/.well-known/openid-configuration") == 0


def test_an_unreachable_provider_sends_back_to_the_login_page(client, idp):
    with override_settings(OIDC_ISSUER="http://127.0.0.1:9/nowhere"):
        response = client.get("/oidc/authenticate/")
        assert response.status_code == 302 and response["Location"] == "/admin/login/"
        assert any("cannot be reached" in m for m in messages_of(client.get("/admin/login/")))


def test_password_logins_are_unchanged_by_sso(client, idp, superuser):
    response = client.post("/admin/login/?next=/console/", {"username": "root-admin", "password": "x-Very-long-42",
                                                            "next": "/console/"})
    assert response.status_code == 302 and response["Location"] == "/console/"
    assert client.get("/console/").status_code == 200
    assert idp.received == []  # a password login never calls the provider


@pytest.mark.parametrize("env,message", [
    ({"OIDC_ISSUER": "https://idp.example"}, "together"),
    ({"OIDC_ISSUER": "https://idp.example", "OIDC_RP_CLIENT_ID": "c", "OIDC_RP_CLIENT_SECRET": "s"}, "nobody"),
])
def test_an_incomplete_sso_configuration_stops_the_start(env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=settings.BASE_DIR, env={**clean, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_password_is_not_what_sso_users_log_in_with(idp):
    idp.sign_in_as("idp-user-10", "judy@corp.example", [ADMINS])
    sign_in(Client(), idp)
    user = User.objects.get(sso_identity__subject="idp-user-10")
    response = Client().post("/admin/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 200 and b"errornote" in response.content


@override_settings(STAFF_REQUIRE_2FA=True)
def test_sso_sessions_are_not_asked_for_a_totp_code(client, idp, superuser):
    """The identity provider does the second factor; required 2FA still holds for password logins."""
    idp.sign_in_as("idp-user-11", "mallory@corp.example", [ADMINS])
    sign_in(client, idp)
    assert client.get("/console/").status_code == 200
    assert client.get("/admin/").status_code == 200
    password = Client()
    refused = password.post("/admin/login/", {"username": "root-admin", "password": "x-Very-long-42"})
    assert refused.status_code == 200 and b"no authenticator enrolled" in refused.content
