"""The tenant operations commands: happy paths, --json output, and every bad-input path exits non-zero."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Q
from django.utils import timezone

from tenants import services as tenant_services
from tenants.models import ATIToken, Tenant, User
from tests.conftest import PASSWORD, assert_error


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def run_json(*args, **options) -> dict:
    text = run(*args, json=True, **options)
    return json.loads(text)  # exactly one JSON document: json.loads rejects trailing text


def issue(plan: str = "PRO", **options) -> dict:
    return run_json("issue_ati_token", "--plan", plan, **options)


def signup_args(secret: str, name: str = "Initech", username: str = "initech-admin") -> list[str]:
    return [
        "create_tenant", "--name", name, "--ati-token", secret, "--admin-username", username,
        "--admin-email", f"{username}@example.com", "--admin-password", PASSWORD,
    ]


# --- issue_ati_token -------------------------------------------------------------------------


def test_issue_ati_token_prints_id_and_secret(catalog):
    out = run("issue_ati_token", "--plan", "PRO", "--note", "for Initech")
    token = ATIToken.objects.get()
    assert token.pk in out
    assert token.plan_tier == "PRO" and token.note == "for Initech" and token.expires_at is None
    secret_line = next(line for line in out.splitlines() if line.startswith("Secret: "))
    secret = secret_line.removeprefix("Secret: ").strip()
    assert token.secret_hash == ATIToken.hash_secret(secret)


def test_issue_ati_token_json_and_only_the_hash_is_stored(catalog):
    body = issue("ENTERPRISE", expires_days=30)
    assert set(body) >= {"ati_id", "secret", "plan", "expires_at"}
    token = ATIToken.objects.get(pk=body["ati_id"])
    assert token.plan_tier == "ENTERPRISE" == body["plan"]
    expected = timezone.now() + timedelta(days=30)
    assert abs(token.expires_at - expected) < timedelta(minutes=1)
    # The secret is nowhere in the row: only its SHA-256.
    assert token.secret_hash == ATIToken.hash_secret(body["secret"]) != body["secret"]
    for field in ATIToken._meta.concrete_fields:
        assert body["secret"] not in str(getattr(token, field.attname)), field.name
    assert not ATIToken.objects.filter(
        Q(pk__contains=body["secret"]) | Q(note__contains=body["secret"]) | Q(secret_hash=body["secret"])
    ).exists()


def test_issued_secret_signs_up_a_tenant_on_that_plan(catalog):
    body = issue("FREE")
    created = run_json(*signup_args(body["secret"]))
    assert created["tenant"]["plan"] == "FREE"
    assert created["tenant"]["ati_id"] == body["ati_id"]


def test_issue_ati_token_unknown_plan(catalog):
    with pytest.raises(CommandError, match="Unknown plan 'GOLD'"):
        run("issue_ati_token", "--plan", "GOLD")
    assert not ATIToken.objects.exists()


def test_issue_ati_token_before_seed_says_so(db):
    with pytest.raises(CommandError, match="seed_catalog"):
        run("issue_ati_token", "--plan", "PRO")


@pytest.mark.parametrize("days", ["0", "-3"])
def test_issue_ati_token_non_positive_expiry(catalog, days):
    with pytest.raises(CommandError, match="positive"):
        run("issue_ati_token", "--plan", "PRO", "--expires-days", days)
    assert not ATIToken.objects.exists()


def test_issue_ati_token_requires_plan(catalog):
    with pytest.raises(CommandError, match="--plan"):
        run("issue_ati_token")


# --- create_tenant ----------------------------------------------------------------------------


def test_create_tenant_text_output(catalog):
    secret = issue()["secret"]
    out = run(*signup_args(secret))
    tenant = Tenant.objects.get(name="Initech")
    admin = User.objects.get(username="initech-admin")
    assert tenant.slug in out and "initech-admin" in out and "PRO" in out
    assert admin.tenant == tenant and admin.role == User.Role.ADMIN and admin.check_password(PASSWORD)


def test_create_tenant_json(catalog):
    body = issue()
    created = run_json(*signup_args(body["secret"]))
    tenant = Tenant.objects.get(pk=created["tenant"]["id"])
    assert created["tenant"] == {
        "id": tenant.pk, "name": "Initech", "slug": "initech", "status": "ACTIVE", "plan": "PRO",
        "ati_id": body["ati_id"],
    }
    admin = User.objects.get(pk=created["admin"]["id"])
    assert created["admin"] == {
        "id": admin.pk, "username": "initech-admin", "email": "initech-admin@example.com", "role": "ADMIN",
    }
    assert ATIToken.objects.get(pk=body["ati_id"]).tenant_id == tenant.pk
    assert PASSWORD not in json.dumps(created)


def test_create_tenant_used_token(catalog):
    secret = issue()["secret"]
    run(*signup_args(secret))
    with pytest.raises(CommandError, match="already been used"):
        run(*signup_args(secret, name="Second", username="second-admin"))
    assert not Tenant.objects.filter(name="Second").exists()
    assert not User.objects.filter(username="second-admin").exists()


def test_create_tenant_revoked_token(catalog):
    body = issue()
    run("revoke_ati_token", body["ati_id"])
    with pytest.raises(CommandError, match="revoked"):
        run(*signup_args(body["secret"]))
    assert not Tenant.objects.exists()


def test_create_tenant_expired_token(catalog):
    body = issue(expires_days=1)
    ATIToken.objects.filter(pk=body["ati_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(CommandError, match="expired"):
        run(*signup_args(body["secret"]))
    assert not Tenant.objects.exists()


def test_create_tenant_unknown_token(catalog):
    with pytest.raises(CommandError, match="Unknown ATI token"):
        run(*signup_args("ati_secret_not-a-real-one"))


def test_create_tenant_weak_password_creates_nothing(catalog):
    body = issue()
    args = signup_args(body["secret"])
    args[-1] = "123"
    with pytest.raises(CommandError, match="too short|too common|entirely numeric"):
        run(*args)
    assert not Tenant.objects.exists()
    assert ATIToken.objects.get(pk=body["ati_id"]).tenant_id is None  # still usable


def test_create_tenant_taken_username(tenant_admin):
    secret = issue()["secret"]
    with pytest.raises(CommandError, match="taken"):
        run(*signup_args(secret, username="ACME-admin"))
    assert Tenant.objects.count() == 1


def test_create_tenant_bad_email(catalog):
    secret = issue()["secret"]
    args = signup_args(secret)
    args[args.index("--admin-email") + 1] = "not-an-email"
    with pytest.raises(CommandError, match="admin-email"):
        run(*args)
    assert not Tenant.objects.exists()


# --- create_user ------------------------------------------------------------------------------


def user_args(tenant: str, username: str = "new-user", *extra: str) -> list[str]:
    return ["create_user", "--tenant", tenant, "--username", username, "--email", f"{username}@example.com",
            "--password", PASSWORD, *extra]


def test_create_user_defaults_to_member(tenant_admin):
    out = run(*user_args(tenant_admin.tenant.slug))
    user = User.objects.get(username="new-user")
    assert user.tenant == tenant_admin.tenant and user.role == User.Role.MEMBER
    assert user.check_password(PASSWORD)
    assert "new-user" in out and tenant_admin.tenant.slug in out


def test_create_user_admin_role_json(tenant_admin):
    body = run_json(*user_args(tenant_admin.tenant.slug, "boss", "--role", "admin"))
    user = User.objects.get(pk=body["user"]["id"])
    assert body == {
        "user": {"id": user.pk, "username": "boss", "email": "boss@example.com", "role": "ADMIN"},
        "tenant": {"id": tenant_admin.tenant.pk, "slug": tenant_admin.tenant.slug},
    }
    assert user.role == User.Role.ADMIN and user.tenant == tenant_admin.tenant


def test_create_user_unknown_tenant(catalog):
    with pytest.raises(CommandError, match="No tenant with slug 'nope'"):
        run(*user_args("nope"))
    assert not User.objects.exists()


def test_create_user_bad_role(tenant_admin):
    with pytest.raises(CommandError, match="role"):
        run(*user_args(tenant_admin.tenant.slug, "x-user", "--role", "owner"))
    assert not User.objects.filter(username="x-user").exists()


def test_create_user_taken_username(member):
    with pytest.raises(CommandError, match="taken"):
        run(*user_args(member.tenant.slug, "acme-member"))


def test_create_user_weak_password(tenant_admin):
    args = user_args(tenant_admin.tenant.slug)
    args[args.index("--password") + 1] = "password"
    with pytest.raises(CommandError, match="too common|too short"):
        run(*args)
    assert not User.objects.filter(username="new-user").exists()


def test_create_user_bad_email(tenant_admin):
    args = user_args(tenant_admin.tenant.slug)
    args[args.index("--email") + 1] = "nobody"
    with pytest.raises(CommandError, match="email"):
        run(*args)
    assert not User.objects.filter(username="new-user").exists()


# --- revoke_ati_token -------------------------------------------------------------------------


def test_revoke_ati_token_of_a_tenant(tenant_admin, django_capture_on_commit_callbacks):
    ati_id = tenant_admin.tenant.signup_ati_token_id
    client = tenant_admin.client
    assert client.get("/api/me/").status_code == 200  # the identity is now cached
    with django_capture_on_commit_callbacks(execute=True):  # the cache invalidation runs on commit
        out = run("revoke_ati_token", ati_id)
    assert ATIToken.objects.get(pk=ati_id).status == ATIToken.Status.REVOKED
    assert ati_id in out and tenant_admin.tenant.slug in out
    assert_error(client.get("/api/me/"), 403, "ati_token_revoked")


def test_revoke_ati_token_twice_says_already(catalog):
    ati_id = issue()["ati_id"]
    first = run_json("revoke_ati_token", ati_id)
    assert first == {"ati_id": ati_id, "status": "REVOKED", "already_revoked": False, "tenant": None}
    second = run("revoke_ati_token", ati_id)
    assert "already revoked" in second
    assert ATIToken.objects.get(pk=ati_id).status == ATIToken.Status.REVOKED


def test_revoke_unknown_ati_token(db):
    with pytest.raises(CommandError, match="No ATI token with id 'ati_missing'"):
        run("revoke_ati_token", "ati_missing")


# --- suspend_tenant / activate_tenant ---------------------------------------------------------


def test_suspend_and_activate_tenant(tenant_admin, django_capture_on_commit_callbacks):
    slug = tenant_admin.tenant.slug
    client = tenant_admin.client
    assert client.get("/api/me/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        out = run("suspend_tenant", slug)
    assert "SUSPENDED" in out
    assert Tenant.objects.get(slug=slug).status == Tenant.Status.SUSPENDED
    assert_error(client.get("/api/me/"), 403, "tenant_suspended")

    with django_capture_on_commit_callbacks(execute=True):
        body = run_json("activate_tenant", slug)
    assert body == {"id": tenant_admin.tenant.pk, "slug": slug, "status": "ACTIVE"}
    assert Tenant.objects.get(slug=slug).status == Tenant.Status.ACTIVE
    assert client.get("/api/me/").status_code == 200


@pytest.mark.parametrize("command", ["suspend_tenant", "activate_tenant"])
def test_status_commands_unknown_tenant(db, command):
    with pytest.raises(CommandError, match="No tenant with slug 'ghost'"):
        run(command, "ghost")


# --- set_enforcement_mode ---------------------------------------------------------------------


def test_set_enforcement_mode_and_inherit(tenant_admin, settings):
    slug = tenant_admin.tenant.slug
    out = run("set_enforcement_mode", "--tenant", slug, "--mode", "SOFT")
    assert "SOFT" in out
    assert Tenant.objects.get(slug=slug).enforcement_mode == "SOFT"

    assert run_json("set_enforcement_mode", "--tenant", slug, "--mode", "shadow")["enforcement_mode"] == "SHADOW"
    assert Tenant.objects.get(slug=slug).enforcement_mode == "SHADOW"

    settings.GATEWAY_ENFORCEMENT_MODE = "HARD"
    body = run_json("set_enforcement_mode", "--tenant", slug, "--mode", "inherit")
    assert body == {"slug": slug, "enforcement_mode": None, "effective_mode": "HARD"}
    assert Tenant.objects.get(slug=slug).enforcement_mode is None


def test_set_enforcement_mode_bad_mode(tenant_admin):
    Tenant.objects.filter(pk=tenant_admin.tenant.pk).update(enforcement_mode="SOFT")
    with pytest.raises(CommandError, match="mode must be one of"):
        run("set_enforcement_mode", "--tenant", tenant_admin.tenant.slug, "--mode", "LENIENT")
    assert Tenant.objects.get(pk=tenant_admin.tenant.pk).enforcement_mode == "SOFT"


def test_set_enforcement_mode_unknown_tenant(db):
    with pytest.raises(CommandError, match="No tenant with slug 'ghost'"):
        run("set_enforcement_mode", "--tenant", "ghost", "--mode", "HARD")


# --- bootstrap_demo ---------------------------------------------------------------------------


DEMO_USERS = ("superadmin", "demo-admin", "demo-member")


def creds(body: dict) -> dict:
    return {key: (body[key]["username"], body[key]["password"]) for key in ("superadmin", "tenant_admin", "member")}


def row_counts() -> dict:
    return {
        "users": User.objects.count(), "tenants": Tenant.objects.count(), "ati_tokens": ATIToken.objects.count(),
    }


@pytest.fixture
def var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    return tmp_path


def test_bootstrap_demo_requires_seeded_catalog(db, var_dir):
    with pytest.raises(CommandError, match="seed_catalog"):
        run("bootstrap_demo")
    assert not User.objects.exists() and not (var_dir / "demo_credentials.json").exists()


def test_bootstrap_demo_creates_everything(catalog, var_dir):
    body = run_json("bootstrap_demo")
    tenant = Tenant.objects.get(slug="demo-patents")
    assert tenant.name == "Demo Patents" and tenant.plan_code == "PRO" and tenant.status == Tenant.Status.ACTIVE
    assert body["tenant"]["slug"] == "demo-patents" and body["tenant"]["plan"] == "PRO"

    superadmin = User.objects.get(username="superadmin")
    assert superadmin.is_superuser and superadmin.is_staff and superadmin.tenant_id is None
    admin = User.objects.get(username="demo-admin")
    assert admin.tenant == tenant and admin.role == User.Role.ADMIN
    member = User.objects.get(username="demo-member")
    assert member.tenant == tenant and member.role == User.Role.MEMBER

    for key, user in (("superadmin", superadmin), ("tenant_admin", admin), ("member", member)):
        assert body[key]["username"] == user.username
        assert user.check_password(body[key]["password"])
    assert body["urls"]["admin"] == "http://127.0.0.1:8000/admin/"
    assert body["urls"]["api_docs"] == "http://127.0.0.1:8000/api/docs/"

    stored = json.loads((var_dir / "demo_credentials.json").read_text())
    assert stored["passwords"] == {u: p for u, p in creds(body).values()}
    assert (var_dir / "demo_credentials.json").stat().st_mode & 0o077 == 0


def test_bootstrap_demo_text_output_shows_credentials_and_urls(catalog, var_dir):
    out = run("bootstrap_demo")
    stored = json.loads((var_dir / "demo_credentials.json").read_text())["passwords"]
    for username in DEMO_USERS:
        assert username in out and stored[username] in out
    assert "http://127.0.0.1:8000/admin/" in out and "http://127.0.0.1:8000/api/docs/" in out


def test_bootstrap_demo_is_idempotent(catalog, var_dir):
    first = run_json("bootstrap_demo")
    counts = row_counts()
    hashes = dict(User.objects.filter(username__in=DEMO_USERS).values_list("username", "password"))
    second = run_json("bootstrap_demo")
    assert creds(second) == creds(first)
    assert second["tenant"] == first["tenant"]
    assert row_counts() == counts
    assert counts == {"users": 3, "tenants": 1, "ati_tokens": 1}
    # Nothing was rewritten: the same password hashes (a reset would re-salt them).
    assert dict(User.objects.filter(username__in=DEMO_USERS).values_list("username", "password")) == hashes
    assert set(second["actions"].values()) == {"reused"}


def test_bootstrap_demo_users_can_log_in(catalog, var_dir, client):
    body = run_json("bootstrap_demo")
    run_json("bootstrap_demo")
    for key in ("tenant_admin", "member"):
        response = client.post(
            "/api/auth/token/", {"username": body[key]["username"], "password": body[key]["password"]},
            content_type="application/json",
        )
        assert response.status_code == 200, response.content
        access = response.json()["access"]
        me = client.get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {access}").json()
        assert me["tenant"]["slug"] == "demo-patents" and me["plan"] == "PRO"
    # The super admin is for the admin console, not API tokens.
    assert client.login(username="superadmin", password=body["superadmin"]["password"])
    assert client.get("/admin/").status_code == 200


def test_bootstrap_demo_without_credentials_file_resets_passwords(catalog, var_dir):
    first = run_json("bootstrap_demo")
    (var_dir / "demo_credentials.json").unlink()
    counts = row_counts()
    second = run_json("bootstrap_demo")
    assert row_counts() == counts
    for key in ("superadmin", "tenant_admin", "member"):
        assert second[key]["password"] != first[key]["password"]
        user = User.objects.get(username=second[key]["username"])
        assert user.check_password(second[key]["password"])
        assert not user.check_password(first[key]["password"])
    stored = json.loads((var_dir / "demo_credentials.json").read_text())["passwords"]
    assert stored == {u: p for u, p in creds(second).values()}
    # ... and a third run prints the new ones again.
    assert creds(run_json("bootstrap_demo")) == creds(second)


def test_bootstrap_demo_recreates_a_missing_member(catalog, var_dir):
    first = run_json("bootstrap_demo")
    member = User.objects.get(username="demo-member")
    User.objects.filter(pk=member.pk).delete()
    second = run_json("bootstrap_demo")
    assert second["actions"]["demo-member"] == "created"
    assert creds(second) == creds(first)
    assert User.objects.get(username="demo-member").check_password(first["member"]["password"])


def test_bootstrap_demo_refuses_a_squatted_superadmin_name(tenant_admin, var_dir):
    tenant_services.user_create(
        tenant=tenant_admin.tenant, username="superadmin", email="s@example.com", password=PASSWORD
    )
    with pytest.raises(CommandError, match="not a super admin"):
        run("bootstrap_demo")
    assert not Tenant.objects.filter(slug="demo-patents").exists()
    assert not (var_dir / "demo_credentials.json").exists()


def test_bootstrap_demo_refuses_a_demo_admin_elsewhere(tenant_admin, var_dir):
    tenant_services.user_create(
        tenant=tenant_admin.tenant, username="demo-admin", email="d@example.com", password=PASSWORD
    )
    with pytest.raises(CommandError, match="taken"):
        run("bootstrap_demo")
    # Everything rolled back: no demo tenant, no orphan ATI token, no super admin.
    assert not Tenant.objects.filter(slug="demo-patents").exists()
    assert ATIToken.objects.count() == 1
    assert not User.objects.filter(username="superadmin").exists()
