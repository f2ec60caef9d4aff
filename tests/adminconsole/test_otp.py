"""Two-factor (TOTP) for staff password logins: /admin/login/ (which the console uses) asks for the code of a
staff user's enrolled device; STAFF_REQUIRE_2FA makes a device mandatory. Devices come from
`manage.py staff_totp enroll`, whose printed secret is what an authenticator app would compute codes from."""

from __future__ import annotations

import base64
import re
import time
from io import StringIO
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django_otp.oath import TOTP

from tenants.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(db) -> User:
    return User.objects.create_superuser(username="root-2fa", email="root2fa@example.com", password=PASSWORD)


def enroll(username: str, *extra: str) -> tuple[str, bytes]:
    """Run the enrol command; return the otpauth URI it printed and the secret key it gave."""
    out = StringIO()
    call_command("staff_totp", "enroll", username, *extra, stdout=out)
    text = out.getvalue()
    uri = re.search(r"otpauth://\S+", text).group(0)
    secret = re.search(r"secret \(base32\): (\S+)", text).group(1)
    assert parse_qs(urlsplit(uri).query)["secret"] == [secret]
    return uri, base64.b32decode(secret + "=" * (-len(secret) % 8))


def code_of(key: bytes, *, steps_ahead: int = 0) -> str:
    """What the authenticator app shows now (RFC 6238: 30 s steps, 6 digits)."""
    totp = TOTP(key, step=30, digits=6)
    totp.time = time.time() + 30 * steps_ahead
    return f"{totp.token():06d}"


def login(client: Client, username: str, code: str | None = None, next_url: str = "/console/"):
    data = {"username": username, "password": PASSWORD, "next": next_url}
    if code is not None:
        data["otp_token"] = code
    return client.post(f"/admin/login/?next={next_url}", data)


def assert_not_in(client: Client) -> None:
    assert client.get("/console/").status_code == 302
    assert client.get("/admin/").status_code == 302


def test_enrol_prints_the_uri_once_and_refuses_a_second_device(root):
    uri, key = enroll("root-2fa")
    assert uri.startswith("otpauth://totp/LLM%20Gateway%3Aroot-2fa?") and "issuer=LLM%20Gateway" in uri
    assert len(key) == 20
    with pytest.raises(CommandError, match="has a device already"):
        enroll("root-2fa")
    uri2, key2 = enroll("root-2fa", "--replace")
    assert key2 != key
    listed = StringIO()
    call_command("staff_totp", "list", stdout=listed)
    assert listed.getvalue().count("root-2fa") == 1 and key2.hex() not in listed.getvalue()


def test_enrol_takes_staff_only(member):
    with pytest.raises(CommandError, match="not an active staff user"):
        enroll(member.user.username)
    with pytest.raises(CommandError, match="No user"):
        enroll("nobody-here")


def test_a_staff_user_with_a_device_needs_the_code(client, root):
    enroll("root-2fa")
    response = login(client, "root-2fa")
    assert response.status_code == 200 and b"Enter the 6-digit code" in response.content
    assert_not_in(client)


def test_a_wrong_code_is_refused_and_counted(client, root):
    _, key = enroll("root-2fa")
    right = code_of(key)
    near = {code_of(key, steps_ahead=n) for n in (-1, 0, 1)}  # all within the device's tolerance
    wrong = next(c for c in (f"{(int(right) + i) % 1_000_000:06d}" for i in range(1, 5)) if c not in near)
    response = login(client, "root-2fa", wrong)
    assert response.status_code == 200 and b"not valid" in response.content
    assert_not_in(client)
    # The failure was recorded (throttling): even the right code waits a moment now.
    response = login(client, "root-2fa", right)
    assert response.status_code == 200 and b"Too many wrong codes" in response.content
    assert_not_in(client)


def test_the_right_code_admits_to_console_and_admin(client, root):
    _, key = enroll("root-2fa")
    code = code_of(key)
    response = login(client, "root-2fa", code, next_url="/console/tenants/")
    assert response.status_code == 302 and response["Location"] == "/console/tenants/"
    assert client.get("/console/").status_code == 200
    assert client.get("/admin/").status_code == 200
    # A code is good once (a replay from someone who saw it is refused).
    again = Client()
    assert login(again, "root-2fa", code).status_code == 200
    assert_not_in(again)


def test_a_password_session_from_before_enrolment_must_add_the_code(root):
    client = Client()
    assert login(client, "root-2fa").status_code == 302
    assert client.get("/console/").status_code == 200
    _, key = enroll("root-2fa")
    console = client.get("/console/")
    assert console.status_code == 302 and console["Location"].startswith("/admin/login/")
    page = client.get(console["Location"])
    assert b"enter your authentication code" in page.content
    assert client.get("/admin/").status_code == 302
    assert login(client, "root-2fa", code_of(key)).status_code == 302
    assert client.get("/console/").status_code == 200


def test_without_a_device_a_password_is_enough_by_default(client, root):
    """The embedded default (`make run`'s demo super admin): STAFF_REQUIRE_2FA is off."""
    response = login(client, "root-2fa")
    assert response.status_code == 302 and response["Location"] == "/console/"
    assert client.get("/console/").status_code == 200


@override_settings(STAFF_REQUIRE_2FA=True)
def test_required_2fa_blocks_staff_without_a_device(client, root):
    response = login(client, "root-2fa")
    assert response.status_code == 200
    assert b"no authenticator enrolled" in response.content and b"staff_totp enroll" in response.content
    assert_not_in(client)
    forced = Client()
    forced.force_login(root)  # a password session that never gave a code
    assert_not_in(forced)
    _, key = enroll("root-2fa")
    assert login(client, "root-2fa", code_of(key)).status_code == 302
    assert client.get("/console/").status_code == 200
    assert client.get("/admin/").status_code == 200


def test_removing_the_device_returns_to_password_only(client, root):
    enroll("root-2fa")
    call_command("staff_totp", "remove", "root-2fa", stdout=StringIO())
    assert login(client, "root-2fa").status_code == 302
    assert client.get("/console/").status_code == 200
