from tests.conftest import assert_error


def test_me_returns_user_tenant_plan_and_role(tenant_admin):
    response = tenant_admin.client.get("/api/me/")
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["username"] == "acme-admin"
    assert body["tenant"]["slug"] == tenant_admin.tenant.slug
    assert body["plan"] == "PRO"
    assert body["role"] == "ADMIN"


def test_me_without_token_is_401_in_error_shape(client, catalog):
    assert_error(client.get("/api/me/"), 401, "not_authenticated")
