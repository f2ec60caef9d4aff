"""Staff sign-in in headless Chromium: the login page's single sign-on button through the loopback
identity provider, and a password + authentication-code login (two-factor). Same browser set-up as
test_browser.py (Debian's chromium; skipped locally without it, failing in CI)."""

from __future__ import annotations

import base64
import re
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings
from django_otp.oath import TOTP

from tests.adminconsole.test_browser import browser, page, shot  # noqa: F401 (fixtures)
from tests.conftest import PASSWORD
from tests.fakes.oidc_fake import FakeIdP

pytestmark = pytest.mark.django_db(transaction=True)


def test_single_sign_on_from_the_login_page_to_the_console(page, live_server):  # noqa: F811
    with FakeIdP() as idp, override_settings(
        OIDC_ISSUER=idp.url, OIDC_RP_CLIENT_ID=idp.client_id, OIDC_RP_CLIENT_SECRET=idp.client_secret,
        OIDC_SUPERUSER_GROUPS=["gw-admins"], OIDC_STAFF_GROUPS=[], OIDC_STAFF_EMAIL_DOMAINS=[],
    ):
        idp.sign_in_as("browser-sub", "olga@corp.example", ["gw-admins"])
        page.goto(f"{live_server.url}/console/tenants/")
        assert "/admin/login/" in page.url
        shot(page, "login-sso")
        page.click("#sso-login")
        page.wait_for_load_state()
        assert page.url == f"{live_server.url}/console/tenants/"
        assert page.locator("header.top .who").inner_text().strip() == "olga@corp.example"
        page.goto(f"{live_server.url}/admin/")
        assert "Site administration" in page.content()
        # Someone the provider knows but who is not staff comes back to the login page with the reason.
        idp.sign_in_as("browser-outsider", "pete@corp.example", ["engineering"])
        page.context.clear_cookies()
        page.goto(f"{live_server.url}/admin/login/")
        page.click("#sso-login")
        page.wait_for_load_state()
        assert page.url == f"{live_server.url}/admin/login/"
        assert "no staff access" in page.content()
        shot(page, "login-sso-refused")


def test_password_and_authentication_code(page, live_server):  # noqa: F811
    from tenants.models import User

    User.objects.create_superuser(username="root-2fa", email="r@example.com", password=PASSWORD)
    out = StringIO()
    call_command("staff_totp", "enroll", "root-2fa", stdout=out)
    secret = re.search(r"secret \(base32\): (\S+)", out.getvalue()).group(1)
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    page.goto(f"{live_server.url}/admin/login/?next=/console/")
    page.fill("#id_username", "root-2fa")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_load_state()
    assert "/admin/login/" in page.url and "Enter the 6-digit code" in page.content()
    totp = TOTP(key)
    totp.time = time.time()
    page.fill("#id_username", "root-2fa")
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", f"{totp.token():06d}")
    shot(page, "login-2fa")
    page.click("input[type=submit]")
    page.wait_for_load_state()
    assert page.url == f"{live_server.url}/console/"
    assert page.locator("header.top .brand").inner_text() == "LLM Gateway console"
