"""Tenant admins manage their own users; members may not; other tenants cannot even see them."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from gateway_project.errors import BadRequest
from tenants import services
from tenants.models import User
from tests.conftest import PASSWORD, assert_error

USERS = "/api/tenant/users/"


def detail(user_id: int) -> str:
    return f"{USERS}{user_id}/"


def new_user_body(**overrides) -> dict:
    body = {"username": "acme-new", "email": "new@acme.example", "password": PASSWORD, "role": "MEMBER"}
    body.update(overrides)
    return body


def login_client(username: str) -> APIClient:
    access = APIClient().post("/api/auth/token/", {"username": username, "password": PASSWORD}, format="json")
    assert access.status_code == 200, access.content
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access.json()['access']}")
    return client


# --- the tenant admin -------------------------------------------------------------------------------


def test_admin_lists_exactly_the_tenants_users(tenant_admin, member, outsider):
    response = tenant_admin.client.get(USERS)
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [r["username"] for r in rows] == ["acme-admin", "acme-member"]
    assert {r["role"] for r in rows} == {"ADMIN", "MEMBER"}
    assert all("password" not in r for r in rows)


def test_admin_creates_a_user_who_can_log_in_to_the_same_tenant(tenant_admin):
    response = tenant_admin.client.post(USERS, new_user_body(), format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["username"] == "acme-new" and created["role"] == "MEMBER" and created["is_active"] is True
    assert "password" not in created

    user = User.objects.get(pk=created["id"])
    assert user.tenant_id == tenant_admin.tenant.pk
    assert user.check_password(PASSWORD)

    me = login_client("acme-new").get("/api/me/").json()
    assert me["tenant"]["id"] == tenant_admin.tenant.pk
    assert me["plan"] == "PRO" and me["role"] == "MEMBER"


def test_admin_can_create_another_admin(tenant_admin):
    response = tenant_admin.client.post(USERS, new_user_body(role="ADMIN"), format="json")
    assert response.status_code == 201
    assert login_client("acme-new").get(USERS).status_code == 200


def test_role_defaults_to_member(tenant_admin):
    body = new_user_body()
    del body["role"]
    assert tenant_admin.client.post(USERS, body, format="json").json()["role"] == "MEMBER"


@pytest.mark.parametrize(
    "overrides, status, code",
    [
        ({"username": "acme-member"}, 409, "username_taken"),
        ({"username": "GLOBEX-ADMIN"}, 409, "username_taken"),  # usernames are unique across tenants
        ({"password": "123"}, 400, "weak_password"),
        ({"role": "OWNER"}, 400, "validation_error"),
        ({"email": "nope"}, 400, "validation_error"),
    ],
    ids=["taken", "taken-other-tenant-case", "weak-password", "bad-role", "bad-email"],
)
def test_invalid_user_creation_is_refused(tenant_admin, member, outsider, overrides, status, code):
    before = User.objects.count()
    assert_error(tenant_admin.client.post(USERS, new_user_body(**overrides), format="json"), status, code)
    assert User.objects.count() == before


def test_admin_reads_and_updates_a_user(tenant_admin, member, django_capture_on_commit_callbacks):
    client = tenant_admin.client
    got = client.get(detail(member.user.pk))
    assert got.status_code == 200 and got.json()["username"] == "acme-member"

    member_client = member.client
    assert_error(member_client.get(USERS), 403, "forbidden")  # identity with role MEMBER now cached

    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch(detail(member.user.pk), {"email": "m2@acme.example", "role": "ADMIN"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["email"] == "m2@acme.example" and response.json()["role"] == "ADMIN"
    member.user.refresh_from_db()
    assert member.user.role == User.Role.ADMIN

    # The promotion takes effect on the member's existing token, not only after the cache expires.
    assert member_client.get(USERS).status_code == 200


def test_admin_resets_a_users_password(tenant_admin, member):
    new_password = "a-brand-new-passphrase-91"
    response = tenant_admin.client.patch(detail(member.user.pk), {"password": new_password}, format="json")
    assert response.status_code == 200
    member.user.refresh_from_db()
    assert member.user.check_password(new_password)
    assert_error(tenant_admin.client.patch(detail(member.user.pk), {"password": "123"}, format="json"), 400,
                 "weak_password")


def test_delete_deactivates_and_the_users_token_stops_working(
    tenant_admin, member, django_capture_on_commit_callbacks
):
    member_client = member.client
    assert member_client.get("/api/me/").status_code == 200  # cached identity

    with django_capture_on_commit_callbacks(execute=True):
        response = tenant_admin.client.delete(detail(member.user.pk))
    assert response.status_code == 204

    member.user.refresh_from_db()
    assert member.user.is_active is False  # deactivated, not deleted: the ledger keeps pointing at it
    assert_error(member_client.get("/api/me/"), 401, "user_inactive")

    listed = {r["username"]: r for r in tenant_admin.client.get(USERS).json()["results"]}
    assert listed["acme-member"]["is_active"] is False

    # Reactivation restores the account, not the sessions deactivation ended: the user signs in again.
    with django_capture_on_commit_callbacks(execute=True):
        assert tenant_admin.client.patch(detail(member.user.pk), {"is_active": True}, format="json").status_code == 200
    assert_error(member_client.get("/api/me/"), 401, "session_revoked")
    assert member.client.get("/api/me/").status_code == 200  # a token issued now


def test_patch_is_active_false_also_deactivates(tenant_admin, member, django_capture_on_commit_callbacks):
    member_client = member.client
    assert member_client.get("/api/me/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = tenant_admin.client.patch(detail(member.user.pk), {"is_active": False}, format="json")
    assert response.status_code == 200 and response.json()["is_active"] is False
    assert_error(member_client.get("/api/me/"), 401, "user_inactive")


def test_unknown_user_id_is_404(tenant_admin):
    assert_error(tenant_admin.client.get(detail(987654)), 404, "user_not_found")


# --- an admin cannot lock the tenant out -----------------------------------------------------------


@pytest.mark.parametrize(
    "method, data",
    [("patch", {"role": "MEMBER"}), ("patch", {"is_active": False}), ("delete", None)],
    ids=["demote", "deactivate", "delete"],
)
def test_admin_cannot_demote_or_deactivate_themselves(tenant_admin, member, method, data):
    client = tenant_admin.client
    response = getattr(client, method)(detail(tenant_admin.user.pk), data, format="json")
    assert_error(response, 400, "cannot_change_self")
    tenant_admin.user.refresh_from_db()
    assert tenant_admin.user.role == User.Role.ADMIN and tenant_admin.user.is_active


def test_admin_may_still_edit_their_own_email(tenant_admin):
    response = tenant_admin.client.patch(detail(tenant_admin.user.pk), {"email": "boss@acme.example"}, format="json")
    assert response.status_code == 200 and response.json()["email"] == "boss@acme.example"


def test_an_admin_can_demote_another_admin_while_one_remains(tenant_admin):
    second = services.user_create(
        tenant=tenant_admin.tenant, username="acme-admin-2", email="a2@acme.example", password=PASSWORD,
        role=User.Role.ADMIN,
    )
    response = tenant_admin.client.patch(detail(second.pk), {"role": "MEMBER"}, format="json")
    assert response.status_code == 200
    assert User.objects.filter(tenant=tenant_admin.tenant, role=User.Role.ADMIN, is_active=True).count() == 1


def test_the_last_active_admin_cannot_be_demoted_or_deactivated(tenant_admin, member):
    # Through the API an admin is always another active admin, so the last-admin rule matters for the
    # other callers of the service (console, commands): a super admin acting on the tenant.
    root = User.objects.create_superuser("root", "root@example.com", "another-long-passphrase-77")
    with pytest.raises(BadRequest) as refused:
        services.user_update(user=tenant_admin.user, actor=root, role=User.Role.MEMBER)
    assert refused.value.code == "last_admin"
    with pytest.raises(BadRequest) as refused:
        services.user_deactivate(user=tenant_admin.user, actor=root)
    assert refused.value.code == "last_admin"
    tenant_admin.user.refresh_from_db()
    assert tenant_admin.user.role == User.Role.ADMIN and tenant_admin.user.is_active


def test_an_inactive_admin_does_not_count_as_the_remaining_admin(tenant_admin):
    dormant = services.user_create(
        tenant=tenant_admin.tenant, username="acme-dormant", email="d@acme.example", password=PASSWORD,
        role=User.Role.ADMIN,
    )
    User.objects.filter(pk=dormant.pk).update(is_active=False)
    root = User.objects.create_superuser("root", "root@example.com", "another-long-passphrase-77")
    with pytest.raises(BadRequest) as refused:
        services.user_update(user=tenant_admin.user, actor=root, role=User.Role.MEMBER)
    assert refused.value.code == "last_admin"


# --- members ------------------------------------------------------------------------------------------


def test_member_is_refused_everything(tenant_admin, member):
    client = member.client
    before = list(User.objects.order_by("pk").values_list("pk", "role", "is_active", "email"))
    assert_error(client.get(USERS), 403, "forbidden")
    assert_error(client.post(USERS, new_user_body(), format="json"), 403, "forbidden")
    for target in (tenant_admin.user.pk, member.user.pk):
        assert_error(client.get(detail(target)), 403, "forbidden")
        assert_error(client.patch(detail(target), {"role": "ADMIN"}, format="json"), 403, "forbidden")
        assert_error(client.delete(detail(target)), 403, "forbidden")
    assert list(User.objects.order_by("pk").values_list("pk", "role", "is_active", "email")) == before


def test_anonymous_is_refused(tenant_admin):
    assert_error(APIClient().get(USERS), 401, "not_authenticated")
    assert_error(APIClient().delete(detail(tenant_admin.user.pk)), 401, "not_authenticated")


# --- other tenants ------------------------------------------------------------------------------------


def test_outsider_gets_404_for_this_tenants_users_and_changes_nothing(tenant_admin, member, outsider):
    client = outsider.client
    before = list(User.objects.order_by("pk").values_list("pk", "role", "is_active", "email", "tenant_id"))
    for target in (tenant_admin.user.pk, member.user.pk):
        assert_error(client.get(detail(target)), 404, "user_not_found")
        assert_error(client.patch(detail(target), {"role": "MEMBER", "is_active": False}, format="json"), 404,
                     "user_not_found")
        assert_error(client.delete(detail(target)), 404, "user_not_found")
    assert list(User.objects.order_by("pk").values_list("pk", "role", "is_active", "email", "tenant_id")) == before


def test_outsider_404_is_indistinguishable_from_a_missing_user(tenant_admin, outsider):
    foreign = outsider.client.get(detail(tenant_admin.user.pk)).json()
    missing = outsider.client.get(detail(987654)).json()
    assert foreign == missing


def test_outsider_list_never_contains_this_tenants_users(tenant_admin, member, outsider):
    rows = outsider.client.get(USERS).json()["results"]
    assert [r["username"] for r in rows] == ["globex-admin"]
    ids = {r["id"] for r in rows}
    assert tenant_admin.user.pk not in ids and member.user.pk not in ids


def test_users_created_by_an_admin_land_in_the_admins_tenant_only(tenant_admin, outsider):
    # Even if the body names another tenant, the new user belongs to the caller's tenant.
    body = new_user_body(tenant=outsider.tenant.pk, tenant_id=outsider.tenant.pk)
    created = tenant_admin.client.post(USERS, body, format="json").json()
    assert User.objects.get(pk=created["id"]).tenant_id == tenant_admin.tenant.pk
    assert created["username"] not in [r["username"] for r in outsider.client.get(USERS).json()["results"]]
