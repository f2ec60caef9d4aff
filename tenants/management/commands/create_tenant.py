"""Create a tenant and its first admin from an ATI token secret (the same service as the signup API)."""

from __future__ import annotations

from typing import Any

from tenants import services
from tenants.management.commands._base import GatewayCommand, email_argument


class Command(GatewayCommand):
    help = "Create a tenant and its first admin from an unused ATI token; the token's plan is the tenant's plan."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="The tenant's display name.")
        parser.add_argument("--ati-token", required=True, help="The ATI token secret (from issue_ati_token).")
        parser.add_argument("--admin-username", required=True)
        parser.add_argument("--admin-email", required=True, type=email_argument)
        parser.add_argument("--admin-password", required=True)

    def run(self, **options: Any) -> dict[str, Any]:
        tenant, admin = services.tenant_signup(
            ati_secret=options["ati_token"],
            tenant_name=options["name"],
            username=options["admin_username"],
            email=options["admin_email"],
            password=options["admin_password"],
        )
        return {
            "tenant": {
                "id": tenant.pk, "name": tenant.name, "slug": tenant.slug, "status": tenant.status,
                "plan": tenant.plan_code, "ati_id": tenant.signup_ati_token_id,
            },
            "admin": {"id": admin.pk, "username": admin.username, "email": admin.email, "role": admin.role},
        }

    def describe(self, result: dict[str, Any]) -> str:
        tenant, admin = result["tenant"], result["admin"]
        return (
            f"Created tenant '{tenant['name']}' (slug {tenant['slug']}, id {tenant['id']}) "
            f"on plan {tenant['plan']} via ATI token {tenant['ati_id']}.\n"
            f"Tenant admin: {admin['username']} <{admin['email']}> (id {admin['id']})."
        )
