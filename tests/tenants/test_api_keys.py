"""API keys (issue 13 §1): tenant admins create, list, rotate and revoke them; the key is shown once and
stored as a hash; keys authenticate the REST API as a Bearer token or in x-api-key; revocation, expiry,
tenant suspension and ATI revocation end a key on its next request, in every process (shared cache)."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services as tenant_services
from tenants.audit import AuditEvent
from tenants.models import ApiKey, User
from tenants.selectors import identity_memo_clear
from tests.conftest import assert_error

KEYS = "/api/keys/"
ME = "/api/me/"


def create(persona, **body):
    return persona.client.post(KEYS, {"name": "ci", **body}, format="json")


def key_client(key: str, *, header: str = "bearer", acting: str | None = None) -> APIClient:
    client = APIClient()
    extra = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if header == "bearer" else {"HTTP_X_API_KEY": key}
    if acting is not None:
        extra["HTTP_X_GATEWAY_USER"] = acting
    client.credentials(**extra)
    return client


def test_admin_creates_a_service_key_shown_once_and_stored_as_a_hash(tenant_admin):
    response = create(tenant_admin, allowed_tasks=["LLM2_DRAFT"])
    assert response.status_code == 201, response.content
    body = response.json()
    key = body["key"]
    assert key.startswith("gw_live_") and key.startswith(body["prefix"] + "_")
    assert body["kind"] == "service" and body["user"] is None and body["allowed_tasks"] == ["LLM2_DRAFT"]
    row = ApiKey.objects.get(pk=body["id"])
    assert key.split("_", 3)[-1] not in row.secret_hash and row.secret_hash != key  # only the hash is kept
    listed = tenant_admin.client.get(KEYS).json()["results"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0] and key not in json.dumps(listed)  # never shown again
    assert AuditEvent.objects.filter(action="api_key.create", object_id=str(row.pk)).exists()
    # The tenant's service account exists but is nobody's to manage.
    assert User.objects.filter(tenant=tenant_admin.tenant, role=User.Role.SERVICE).count() == 1
    users = tenant_admin.client.get("/api/tenant/users/").json()["results"]
    assert all(u["role"] != "SERVICE" for u in users)


def test_a_key_authenticates_as_bearer_and_as_x_api_key(tenant_admin, member):
    key = create(tenant_admin, user=member.user.username).json()["key"]
    for header in ("bearer", "x-api-key"):
        me = key_client(key, header=header).get(ME)
        assert me.status_code == 200, me.content
        assert me.json()["user"]["username"] == member.user.username


def test_wrong_or_unknown_keys_are_401(tenant_admin):
    key = create(tenant_admin).json()["key"]
    assert_error(key_client(key[:-2] + "xx").get(ME), 401, "api_key_invalid")
    assert_error(key_client("gw_live_000000000000_nothing").get(ME), 401, "api_key_invalid")
    assert_error(key_client("not-a-key", header="x-api-key").get(ME), 401, "token_not_valid")


def test_members_get_403_and_other_tenants_keys_are_404(tenant_admin, member, outsider):
    key_id = create(tenant_admin).json()["id"]
    assert_error(member.client.get(KEYS), 403, "forbidden")
    assert_error(create(member), 403, "forbidden")
    assert_error(member.client.delete(f"{KEYS}{key_id}/"), 403, "forbidden")
    assert outsider.client.get(KEYS).json()["results"] == []
    assert_error(outsider.client.get(f"{KEYS}{key_id}/"), 404, "api_key_not_found")
    assert_error(outsider.client.delete(f"{KEYS}{key_id}/"), 404, "api_key_not_found")
    assert_error(outsider.client.post(f"{KEYS}{key_id}/rotate/"), 404, "api_key_not_found")
    assert ApiKey.objects.get(pk=key_id).revoked_at is None
    # An outsider's user cannot be named as the key's user either.
    assert_error(create(tenant_admin, user=outsider.user.username), 400, "invalid_api_key")


def test_bad_input_is_400(tenant_admin):
    assert_error(create(tenant_admin, allowed_tasks=["NOPE"]), 400, "invalid_api_key")
    assert_error(create(tenant_admin, allowed_model_classes=["NOPE"]), 400, "invalid_api_key")
    past = (timezone.now() - timedelta(days=1)).isoformat()
    assert_error(create(tenant_admin, expires_at=past), 400, "invalid_api_key")
    assert tenant_admin.client.post(KEYS, {"name": ""}, format="json").status_code == 400
    assert not ApiKey.objects.exists()


def test_revoke_stops_the_key_on_its_next_request_even_when_cached(tenant_admin, django_capture_on_commit_callbacks):
    key = create(tenant_admin).json()
    client = key_client(key["key"])
    assert client.get(ME).status_code == 200  # now cached in the shared cache
    identity_memo_clear()  # another process: nothing of this one's memory
    with django_capture_on_commit_callbacks(execute=True):
        assert tenant_admin.client.delete(f"{KEYS}{key['id']}/").status_code == 204
    assert_error(client.get(ME), 401, "api_key_revoked")
    assert tenant_admin.client.get(f"{KEYS}{key['id']}/").json()["status"] == "revoked"


def test_rotate_gives_a_new_secret_and_ends_the_old_one(tenant_admin, django_capture_on_commit_callbacks):
    first = create(tenant_admin).json()
    assert key_client(first["key"]).get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        rotated = tenant_admin.client.post(f"{KEYS}{first['id']}/rotate/")
    assert rotated.status_code == 200, rotated.content
    second = rotated.json()
    assert second["id"] == first["id"] and second["key"] != first["key"]
    assert_error(key_client(first["key"]).get(ME), 401, "api_key_invalid")
    assert key_client(second["key"]).get(ME).status_code == 200


def test_expired_key_is_401_cached_or_not(tenant_admin, monkeypatch):
    issued = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="short",
                                            expires_at=timezone.now() + timedelta(minutes=5))
    client = key_client(issued.secret)
    assert client.get(ME).status_code == 200  # cached now, with its expiry
    later = timezone.now() + timedelta(minutes=6)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert_error(client.get(ME), 401, "api_key_expired")  # the cached identity's expiry is checked
    cache.clear()
    assert_error(client.get(ME), 401, "api_key_expired")  # and the database's


def test_tenant_suspension_and_ati_revocation_end_keys(tenant_admin, django_capture_on_commit_callbacks):
    issued = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="svc")
    client = key_client(issued.secret)
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.tenant_suspend(slug=tenant_admin.tenant.slug)
    assert_error(client.get(ME), 403, "tenant_suspended")
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.tenant_activate(slug=tenant_admin.tenant.slug)
    assert client.get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.ati_token_revoke(ati_id=tenant_admin.tenant.signup_ati_token_id)
    assert_error(client.get(ME), 403, "ati_token_revoked")


def test_acting_user_rules(tenant_admin, member, outsider, django_capture_on_commit_callbacks):
    service = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="svc").secret
    user_key = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="mine", user=member.user).secret
    me = key_client(service, acting=member.user.username).get(ME)
    assert me.status_code == 200 and me.json()["user"]["username"] == member.user.username
    assert_error(key_client(service, acting=outsider.user.username).get(ME), 403, "acting_user_invalid")
    assert_error(key_client(service, acting="nobody").get(ME), 403, "acting_user_invalid")
    assert_error(key_client(user_key, acting=tenant_admin.user.username).get(ME), 403, "acting_user_not_allowed")
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.user_deactivate(user=member.user, actor=tenant_admin.user)
    assert_error(key_client(service, acting=member.user.username).get(ME), 403, "acting_user_invalid")


def test_a_user_key_of_a_deactivated_user_stops(tenant_admin, member, django_capture_on_commit_callbacks):
    key = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="mine", user=member.user).secret
    assert key_client(key).get(ME).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.user_deactivate(user=member.user, actor=tenant_admin.user)
    assert_error(key_client(key).get(ME), 401, "user_inactive")


def test_create_api_key_command(tenant_admin, member):
    out = StringIO()
    call_command("create_api_key", "--tenant", tenant_admin.tenant.slug, "--user", member.user.username,
                 "--tasks", "LLM2_DRAFT", "--limit", "key_tokens_per_day=5000", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["limits"] == {"key_tokens_per_day": 5000}
    assert result["kind"] == "user" and result["user"] == member.user.username
    assert result["allowed_tasks"] == ["LLM2_DRAFT"] and result["key"].startswith("gw_live_")
    assert key_client(result["key"]).get(ME).json()["user"]["username"] == member.user.username
    with pytest.raises(CommandError):
        call_command("create_api_key", "--tenant", "no-such-tenant", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("create_api_key", "--tenant", tenant_admin.tenant.slug, "--user", "nobody", stdout=StringIO())


def test_a_keys_own_budget_is_validated_by_the_policy_registry(tenant_admin, outsider):
    created = create(tenant_admin, limits={"key_tokens_per_day": 1000, "key_cost_per_month_usd": "2.5"})
    assert created.status_code == 201, created.content
    assert created.json()["limits"] == {"key_cost_per_month_usd": "2.5", "key_tokens_per_day": 1000}
    key_id = created.json()["id"]
    assert_error(create(tenant_admin, limits={"tenant_tokens_per_day": 5}), 400, "invalid_api_key")
    assert_error(create(tenant_admin, limits={"key_tokens_per_day": -1}), 400, "invalid_api_key")
    assert_error(create(tenant_admin, limits={"nope": 1}), 400, "invalid_api_key")
    changed = tenant_admin.client.patch(f"{KEYS}{key_id}/", {"limits": {"key_tokens_per_month": "5000"}},
                                        format="json")
    assert changed.status_code == 200 and changed.json()["limits"] == {"key_tokens_per_month": 5000}
    assert_error(outsider.client.patch(f"{KEYS}{key_id}/", {"limits": {}}, format="json"), 404, "api_key_not_found")
    # A policy rule cannot set a key's budget: it lives on the key.
    from metering.policy_keys import PolicyValueError, validate_value

    with pytest.raises(PolicyValueError):
        validate_value("key_tokens_per_day", 10)


def test_django_admin_creates_a_key_shown_once_and_revokes_it(admin_client, tenant_admin):
    from django.urls import reverse

    add = reverse("admin:tenants_apikey_add")
    response = admin_client.post(add, {"tenant": tenant_admin.tenant.pk, "user": "", "name": "from admin",
                                       "allowed_tasks": "LLM2_DRAFT", "allowed_model_classes": "",
                                       "expires_at": "", "limits": '{"key_tokens_per_day": 1000}'}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    key = ApiKey.objects.get(name="from admin")
    assert key.allowed_tasks == ["LLM2_DRAFT"] and key.limits == {"key_tokens_per_day": 1000}
    secret = next(part for m in shown for part in m.split() if part.startswith("gw_live_") and "_" in part[8:])
    assert key_client(secret).get(ME).status_code == 200
    page = admin_client.get(reverse("admin:tenants_apikey_change", args=[key.pk]))
    assert secret not in page.content.decode() and key.secret_hash not in page.content.decode()
    changelist = reverse("admin:tenants_apikey_changelist")
    admin_client.post(changelist, {"action": "revoke_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(action="api_key.revoke", object_id=str(key.pk)).exists()
