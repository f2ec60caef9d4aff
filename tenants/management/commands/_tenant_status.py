"""Common body of suspend_tenant and activate_tenant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenants.management.commands._base import GatewayCommand
from tenants.models import Tenant


class TenantStatusCommand(GatewayCommand):
    service: Callable[..., Tenant]

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug", help="The tenant's slug.")

    def run(self, **options: Any) -> dict[str, Any]:
        tenant = self.service(slug=options["slug"])
        return {"id": tenant.pk, "slug": tenant.slug, "status": tenant.status}

    def describe(self, result: dict[str, Any]) -> str:
        return f"Tenant {result['slug']} is now {result['status']}."
