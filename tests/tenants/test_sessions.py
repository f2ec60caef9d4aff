"""Sessions end when they should: a password change (by the user, their tenant admin, the admin site or
`changepassword`), a deactivation, or "sign out everywhere" refuses every earlier access and refresh
token on its next use, while the tokens issued afterwards work."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.core.management import call_command
from rest_framework.test import APIClient

from tenants.audit import AuditEvent
from tenants.models import User
from tests.conftest import PASSWORD, assert_error

TOKEN = "/api/auth/token/"
REFRESH = "/api/auth/token/refresh/"
ME = "/api/me/"
PASSWORD_CHANGE = "/api/me/password/"
REVOKE_MINE = "/api/me/sessions/revoke/"
NEW_PASSWORD = "a-brand-new-passphrase-93"


def revoke_url(user_id: int) -> str:
    return f"/api/tenant/users/{user_id}/sessions/revoke/"


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def login(username: str, password: str = PASSWORD) -> dict:
    response = APIClient().post(TOKEN, {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def refresh(token: str):
    return APIClient().post(REFRESH, {"refresh": token}, format="json")


def signed_in(username: str, password: str = PASSWORD) -> dict:
    """A session whose identity is cached (so that ending it must go through the cache's invalidation)."""
    tokens = login(username, password)
    assert bearer(tokens["access"]).get(ME).status_code == 200
    return tokens


def assert_ended(tokens: dict) -> None:
    assert_error(bearer(tokens["access"]).get(ME), 401, "session_revoked")
    body = assert_error(refresh(tokens["refresh"]), 401, "session_revoked")
    assert "access" not in body


def assert_alive(tokens: dict) -> None:
    assert bearer(tokens["access"]).get(ME).status_code == 200
    fresh = refresh(tokens["refresh"])
    assert fresh.status_code == 200, fresh.content
    assert bearer(fresh.json()["access"]).get(ME).status_code == 200


def change_own_password(access: str, current: str = PASSWORD, new: str = NEW_PASSWORD):
    return bearer(access).post(PASSWORD_CHANGE, {"current_password": current, "new_password": new}, format="json")


# --- the user changes their own password -----------------------------------------------------------


def test_changing_my_password_ends_every_earlier_session(tenant_admin, member, django_capture_on_commit_callbacks):
    laptop, phone = signed_in("acme-member"), signed_in("acme-member")
    colleague = signed_in("acme-admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = change_own_password(laptop["access"])
    assert response.status_code == 200, response.content

    assert_ended(laptop)
    assert_ended(phone)
    assert_alive(response.json())  # the pair handed back to whoever just proved the password
    assert_alive(colleague)  # other users keep theirs
    assert_error(APIClient().post(TOKEN, {"username": "acme-member", "password": PASSWORD}, format="json"), 401,
                 "invalid_credentials")
    assert_alive(login("acme-member", NEW_PASSWORD))
    assert AuditEvent.objects.filter(action="user.password_change", object_id=str(member.user.pk)).exists()


def test_a_wrong_current_password_changes_nothing(member):
    tokens = signed_in("acme-member")
    assert_error(change_own_password(tokens["access"], current="not-my-password"), 400, "wrong_password")
    assert_alive(tokens)
    assert_alive(login("acme-member", PASSWORD))


def test_wrong_current_passwords_count_towards_the_sign_in_lockout(member, settings):
    # A stolen access token must not be a way to guess the password without limit.
    settings.GATEWAY_LOGIN_FAILURE_LIMIT = 3
    tokens = signed_in("acme-member")
    for _ in range(3):
        assert_error(change_own_password(tokens["access"], current="guess"), 400, "wrong_password")
    refused = change_own_password(tokens["access"])  # even the right one, now
    assert_error(refused, 429, "too_many_attempts")
    assert int(refused["Retry-After"]) > 0
    assert_error(APIClient().post(TOKEN, {"username": "acme-member", "password": PASSWORD}, format="json"), 429,
                 "too_many_attempts")


@pytest.mark.parametrize("new, code", [("short", "weak_password"), (PASSWORD, "password_unchanged")])
def test_an_unacceptable_new_password_is_refused(member, new, code):
    tokens = signed_in("acme-member")
    assert_error(change_own_password(tokens["access"], new=new), 400, code)
    assert_alive(tokens)


def test_password_change_needs_both_fields_and_a_token(member):
    tokens = signed_in("acme-member")
    body = assert_error(bearer(tokens["access"]).post(PASSWORD_CHANGE, {}, format="json"), 400, "validation_error")
    assert {"current_password", "new_password"} <= set(body["error"]["details"]["fields"])
    assert_error(APIClient().post(PASSWORD_CHANGE, {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                                  format="json"), 401, "not_authenticated")


def test_my_password_change_leaves_other_tenants_alone(member, outsider, django_capture_on_commit_callbacks):
    # The endpoint takes no user id: it can only ever change the caller's own password.
    acme, globex = signed_in("acme-member"), signed_in("globex-admin")
    with django_capture_on_commit_callbacks(execute=True):
        assert change_own_password(globex["access"]).status_code == 200
    assert_alive(acme)
    assert_ended(globex)
    assert_alive(login("acme-member", PASSWORD))


def test_a_password_hash_upgrade_at_login_is_not_a_password_change(member, settings):
    tokens = signed_in("acme-member")
    # A stronger preferred hasher: the next login re-hashes the password (Django does, on its own).
    settings.PASSWORD_HASHERS = ["tests.tenants.test_sessions.QuickPBKDF2",
                                 "django.contrib.auth.hashers.MD5PasswordHasher"]
    login("acme-member")
    assert User.objects.get(pk=member.user.pk).password.startswith("quick_pbkdf2$")
    assert_alive(tokens)


class QuickPBKDF2(PBKDF2PasswordHasher):
    algorithm = "quick_pbkdf2"
    iterations = 1


# --- someone else sets the password ------------------------------------------------------------------


def test_a_tenant_admin_setting_a_password_ends_that_users_sessions(
    tenant_admin, member, django_capture_on_commit_callbacks
):
    tokens = signed_in("acme-member")
    admin_tokens = signed_in("acme-admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = bearer(admin_tokens["access"]).patch(
            f"/api/tenant/users/{member.user.pk}/", {"password": NEW_PASSWORD}, format="json"
        )
    assert response.status_code == 200, response.content
    assert_ended(tokens)
    assert_alive(admin_tokens)
    assert_alive(login("acme-member", NEW_PASSWORD))


def test_other_edits_by_the_tenant_admin_keep_the_session(tenant_admin, member, django_capture_on_commit_callbacks):
    tokens = signed_in("acme-member")
    with django_capture_on_commit_callbacks(execute=True):
        response = tenant_admin.client.patch(f"/api/tenant/users/{member.user.pk}/",
                                             {"email": "renamed@example.com"}, format="json")
    assert response.status_code == 200
    assert_alive(tokens)


def test_a_password_set_in_the_django_admin_ends_the_users_sessions(
    member, admin_client, django_capture_on_commit_callbacks
):
    tokens = signed_in("acme-member")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/admin/tenants/user/{member.user.pk}/password/",
            {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
        )
    assert response.status_code == 302, response.content[:2000]
    assert_ended(tokens)
    assert_alive(login("acme-member", NEW_PASSWORD))


def test_disabling_password_login_in_the_django_admin_ends_the_users_sessions(
    member, admin_client, django_capture_on_commit_callbacks
):
    tokens = signed_in("acme-member")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/tenants/user/{member.user.pk}/password/",
                                     {"usable_password": "false", "unset-password": "1"})
    assert response.status_code == 302, response.content[:2000]
    assert not User.objects.get(pk=member.user.pk).has_usable_password()
    assert_ended(tokens)


def test_changepassword_command_ends_the_users_sessions(member, monkeypatch, django_capture_on_commit_callbacks):
    tokens = signed_in("acme-member")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": NEW_PASSWORD)  # the operator's typing
    with django_capture_on_commit_callbacks(execute=True):
        call_command("changepassword", "acme-member", stdout=io.StringIO())
    assert_ended(tokens)
    assert_alive(login("acme-member", NEW_PASSWORD))


# --- deactivation ----------------------------------------------------------------------------------


def test_deactivation_ends_sessions_for_good(tenant_admin, member, django_capture_on_commit_callbacks):
    tokens = signed_in("acme-member")
    with django_capture_on_commit_callbacks(execute=True):
        assert tenant_admin.client.delete(f"/api/tenant/users/{member.user.pk}/").status_code == 204
    assert_error(bearer(tokens["access"]).get(ME), 401, "user_inactive")
    assert_error(refresh(tokens["refresh"]), 401, "user_inactive")

    # Reactivating the account does not bring the old tokens back.
    with django_capture_on_commit_callbacks(execute=True):
        response = tenant_admin.client.patch(f"/api/tenant/users/{member.user.pk}/", {"is_active": True},
                                             format="json")
    assert response.status_code == 200
    assert_ended(tokens)
    assert_alive(login("acme-member"))


def test_deactivation_by_a_plain_model_save_ends_sessions_for_good(member, django_capture_on_commit_callbacks):
    tokens = signed_in("acme-member")
    with django_capture_on_commit_callbacks(execute=True):
        user = User.objects.get(pk=member.user.pk)
        user.is_active = False
        user.save()  # what the admin's change form and a shell do
    with django_capture_on_commit_callbacks(execute=True):
        user.is_active = True
        user.save()
    assert_ended(tokens)


# --- sign out everywhere -----------------------------------------------------------------------------


def test_signing_myself_out_everywhere(tenant_admin, member, django_capture_on_commit_callbacks):
    laptop, phone = signed_in("acme-member"), signed_in("acme-member")
    colleague = signed_in("acme-admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = bearer(laptop["access"]).post(REVOKE_MINE)
    assert response.status_code == 204
    assert_ended(laptop)
    assert_ended(phone)
    assert_alive(colleague)
    assert_alive(login("acme-member"))  # the password still works
    assert AuditEvent.objects.filter(action="user.sessions_revoke", object_id=str(member.user.pk)).exists()


def test_signing_myself_out_leaves_other_tenants_alone(member, outsider, django_capture_on_commit_callbacks):
    acme, globex = signed_in("acme-member"), signed_in("globex-admin")
    with django_capture_on_commit_callbacks(execute=True):
        assert bearer(globex["access"]).post(REVOKE_MINE).status_code == 204
    assert_ended(globex)
    assert_alive(acme)


def test_signing_out_everywhere_needs_a_token(catalog):
    assert_error(APIClient().post(REVOKE_MINE), 401, "not_authenticated")


def test_a_tenant_admin_signs_a_user_out_everywhere(tenant_admin, member, django_capture_on_commit_callbacks):
    tokens, admin_tokens = signed_in("acme-member"), signed_in("acme-admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = bearer(admin_tokens["access"]).post(revoke_url(member.user.pk))
    assert response.status_code == 204
    assert_ended(tokens)
    assert_alive(admin_tokens)
    assert_alive(login("acme-member"))
    event = AuditEvent.objects.get(action="user.sessions_revoke", object_id=str(member.user.pk))
    assert event.actor_id == tenant_admin.user.pk and event.tenant_id == tenant_admin.tenant.pk


def test_another_tenants_admin_gets_404_and_ends_nothing(member, outsider, django_capture_on_commit_callbacks):
    tokens = signed_in("acme-member")
    with django_capture_on_commit_callbacks(execute=True):
        response = outsider.client.post(revoke_url(member.user.pk))
    assert_error(response, 404, "user_not_found")
    assert_error(outsider.client.post(revoke_url(987654)), 404, "user_not_found")  # same as no such user
    assert_alive(tokens)


def test_a_member_may_not_sign_others_out(tenant_admin, member):
    admin_tokens = signed_in("acme-admin")
    assert_error(member.client.post(revoke_url(tenant_admin.user.pk)), 403, "forbidden")
    assert_alive(admin_tokens)


def test_the_django_admin_action_signs_users_out_everywhere(
    tenant_admin, member, admin_client, django_capture_on_commit_callbacks
):
    tokens, admin_tokens = signed_in("acme-member"), signed_in("acme-admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/tenants/user/", {"action": "sign_out_everywhere", "_selected_action": [member.user.pk]}
        )
    assert response.status_code == 302, response.content[:2000]
    assert_ended(tokens)
    assert_alive(admin_tokens)
    assert AuditEvent.objects.filter(action="user.sessions_revoke", source="ADMIN").count() == 1


# --- the check costs nothing on the hot path ----------------------------------------------------------


def test_a_new_session_is_served_from_the_identity_cache_again(
    member, django_capture_on_commit_callbacks, django_assert_num_queries
):
    with django_capture_on_commit_callbacks(execute=True):
        assert bearer(signed_in("acme-member")["access"]).post(REVOKE_MINE).status_code == 204
    tokens = signed_in("acme-member")
    with django_assert_num_queries(0):  # the version rides on the cached identity
        assert bearer(tokens["access"]).get(ME).status_code == 200
