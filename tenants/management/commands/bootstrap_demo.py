"""Create (or reuse) the demo super admin, the demo tenant and its two users, and print their credentials.

Idempotent. Passwords are generated once and kept in VAR_DIR/demo_credentials.json, so a re-run
prints the same credentials; a user whose password does not match the file (the file was lost,
or the password was changed) gets the file's password (or a new generated one) again.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.db import transaction

from catalog.models import Plan
from tenants import services
from tenants.management.commands._base import GatewayCommand
from tenants.models import Tenant, User

DEMO_PLAN = "PRO"
DEMO_TENANT_NAME = "Demo Patents"
DEMO_TENANT_SLUG = "demo-patents"
SUPERADMIN = "superadmin"
DEMO_ADMIN = "demo-admin"
DEMO_MEMBER = "demo-member"
BASE_URL = "http://127.0.0.1:8000"
CREDENTIALS_FILE = "demo_credentials.json"


def credentials_path() -> Path:
    return Path(settings.VAR_DIR) / CREDENTIALS_FILE


def _new_password() -> str:
    return secrets.token_urlsafe(18)


class Command(GatewayCommand):
    help = (
        "Create or reuse the demo super admin, the demo tenant 'Demo Patents' (plan PRO) with an admin and a "
        "member, and print their credentials. Needs a seeded catalog. Safe to run again."
    )

    def run(self, **options: Any) -> dict[str, Any]:
        if not Plan.objects.filter(code=DEMO_PLAN, is_active=True).exists():
            raise CommandError(
                f"The catalog is not seeded (no active plan {DEMO_PLAN}): run `python manage.py seed_catalog` first."
            )
        path = credentials_path()
        stored = self._read_credentials(path)
        actions: dict[str, str] = {}
        with transaction.atomic():
            passwords = {name: stored.get(name) or _new_password() for name in (SUPERADMIN, DEMO_ADMIN, DEMO_MEMBER)}
            superadmin = self._superadmin(passwords[SUPERADMIN], actions)
            tenant = self._tenant(passwords[DEMO_ADMIN], actions)
            admin = self._tenant_user(tenant, DEMO_ADMIN, User.Role.ADMIN, passwords[DEMO_ADMIN], actions)
            member = self._tenant_user(tenant, DEMO_MEMBER, User.Role.MEMBER, passwords[DEMO_MEMBER], actions)
            if passwords != stored:
                # Written inside the transaction: if writing fails, no password changes either.
                self._write_credentials(path, passwords)

        def person(user: User) -> dict[str, Any]:
            return {"id": user.pk, "username": user.username, "password": passwords[user.username],
                    "email": user.email, "role": "SUPERADMIN" if user.is_superuser else user.role,
                    "is_active": user.is_active}

        return {
            "superadmin": person(superadmin),
            "tenant": {"id": tenant.pk, "name": tenant.name, "slug": tenant.slug, "plan": tenant.plan_code,
                       "status": tenant.status, "ati_id": tenant.signup_ati_token_id},
            "tenant_admin": person(admin),
            "member": person(member),
            "urls": {"admin": f"{BASE_URL}/admin/", "api_docs": f"{BASE_URL}/api/docs/",
                     "token": f"{BASE_URL}/api/auth/token/"},
            "credentials_file": str(path),
            "actions": actions,
        }

    # --- the credentials file ----------------------------------------------------------------

    def _read_credentials(self, path: Path) -> dict[str, str]:
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            return {str(k): str(v) for k, v in data["passwords"].items() if v}
        except (ValueError, KeyError, TypeError, AttributeError):
            self.stderr.write(f"{path} is unreadable; generating new demo passwords.")
            return {}

    def _write_credentials(self, path: Path, passwords: dict[str, str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".demo_credentials.")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"passwords": passwords}, handle, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- the rows ------------------------------------------------------------------------------

    def _ensure_password(self, user: User, password: str, actions: dict[str, str]) -> None:
        if not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
            actions[user.username] = "password reset"
        else:
            actions.setdefault(user.username, "reused")

    def _superadmin(self, password: str, actions: dict[str, str]) -> User:
        user = User.objects.filter(username__iexact=SUPERADMIN).first()
        if user is None:
            actions[SUPERADMIN] = "created"
            return User.objects.create_superuser(
                username=SUPERADMIN, email=f"{SUPERADMIN}@example.com", password=password
            )
        if not (user.is_superuser and user.tenant_id is None):
            raise CommandError(f"A user '{user.username}' exists but is not a super admin; rename or remove it.")
        self._ensure_password(user, password, actions)
        return user

    def _tenant(self, admin_password: str, actions: dict[str, str]) -> Tenant:
        tenant = Tenant.objects.select_related("signup_ati_token").filter(slug=DEMO_TENANT_SLUG).first()
        if tenant is not None:
            actions["tenant"] = "reused"
            return tenant
        issued = services.ati_token_issue(plan_code=DEMO_PLAN, note="bootstrap_demo")
        tenant, _ = services.tenant_signup(
            ati_secret=issued.secret, tenant_name=DEMO_TENANT_NAME, username=DEMO_ADMIN,
            email=f"{DEMO_ADMIN}@example.com", password=admin_password,
        )
        if tenant.slug != DEMO_TENANT_SLUG:  # pragma: no cover - the slug was checked free just above
            raise CommandError(f"The demo tenant got slug '{tenant.slug}' instead of '{DEMO_TENANT_SLUG}'.")
        actions["tenant"] = "created"
        actions[DEMO_ADMIN] = "created"
        return tenant

    def _tenant_user(self, tenant: Tenant, username: str, role: str, password: str,
                     actions: dict[str, str]) -> User:
        user = User.objects.filter(username__iexact=username).first()
        if user is None:
            actions[username] = "created"
            return services.user_create(
                tenant=tenant, username=username, email=f"{username}@example.com", password=password, role=role
            )
        if user.tenant_id != tenant.pk:
            raise CommandError(f"A user '{user.username}' exists outside the demo tenant; rename or remove it.")
        self._ensure_password(user, password, actions)
        return user

    # --- output --------------------------------------------------------------------------------

    def describe(self, result: dict[str, Any]) -> str:
        tenant = result["tenant"]
        done = ", ".join(f"{name} {action}" for name, action in result["actions"].items())
        lines = [
            f"Demo ready ({done}).",
            f"  Tenant: {tenant['name']} (slug {tenant['slug']}, plan {tenant['plan']}, {tenant['status']})",
            "",
            "  Credentials:",
        ]
        for label, key in (("Super admin", "superadmin"), ("Tenant admin", "tenant_admin"),
                           ("Member", "member")):
            person = result[key]
            lines.append(f"    {label + ':':<14} username {person['username']:<12} password {person['password']}")
        lines += [
            "",
            f"  Admin console: {result['urls']['admin']}  (super admin)",
            f"  API docs:      {result['urls']['api_docs']}",
            f"  Get a token:   curl -s -X POST {result['urls']['token']} -H 'Content-Type: application/json' "
            f"-d '{{\"username\": \"{result['tenant_admin']['username']}\", \"password\": \"...\"}}'",
            "",
            f"  Credentials are kept in {result['credentials_file']}; a re-run prints the same ones.",
        ]
        for key in ("superadmin", "tenant_admin", "member"):
            if not result[key]["is_active"]:
                lines.append(f"  Note: {result[key]['username']} is deactivated and cannot log in.")
        if tenant["status"] != Tenant.Status.ACTIVE:
            lines.append(f"  Note: the demo tenant is {tenant['status']}: run activate_tenant {tenant['slug']}.")
        return "\n".join(lines)
