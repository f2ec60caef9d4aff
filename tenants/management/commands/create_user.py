"""Create a user in an existing tenant."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from tenants import services
from tenants.management.commands._base import GatewayCommand, email_argument
from tenants.models import Tenant, User

ROLES = {"admin": User.Role.ADMIN, "member": User.Role.MEMBER}


class Command(GatewayCommand):
    help = "Create a user in a tenant: --tenant SLUG --username U --email E --password P [--role admin|member]."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", required=True, type=email_argument)
        parser.add_argument("--password", required=True)
        parser.add_argument("--role", type=str.lower, choices=sorted(ROLES), default="member")

    def run(self, **options: Any) -> dict[str, Any]:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug '{options['tenant']}'.")
        user = services.user_create(
            tenant=tenant, username=options["username"], email=options["email"],
            password=options["password"], role=ROLES[options["role"]],
        )
        return {
            "user": {"id": user.pk, "username": user.username, "email": user.email, "role": user.role},
            "tenant": {"id": tenant.pk, "slug": tenant.slug},
        }

    def describe(self, result: dict[str, Any]) -> str:
        user, tenant = result["user"], result["tenant"]
        return (
            f"Created {user['role'].lower()} {user['username']} <{user['email']}> (id {user['id']}) "
            f"in tenant {tenant['slug']}."
        )
