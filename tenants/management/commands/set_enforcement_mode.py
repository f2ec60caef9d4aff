"""Set a tenant's enforcement mode override, or let it inherit the global mode."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from tenants import services
from tenants.management.commands._base import GatewayCommand
from tenants.models import EnforcementMode

INHERIT = "inherit"


class Command(GatewayCommand):
    help = "Set a tenant's enforcement mode: --tenant SLUG --mode SHADOW|SOFT|HARD|inherit."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument(
            "--mode", required=True,
            help=f"One of {', '.join(EnforcementMode.values)}, or {INHERIT} (use GATEWAY_ENFORCEMENT_MODE).",
        )

    def run(self, **options: Any) -> dict[str, Any]:
        raw = options["mode"].strip()
        mode = None if raw.lower() == INHERIT else raw.upper()
        tenant = services.tenant_set_enforcement_mode(slug=options["tenant"], mode=mode)
        return {
            "slug": tenant.slug,
            "enforcement_mode": tenant.enforcement_mode,
            "effective_mode": tenant.enforcement_mode or getattr(settings, "GATEWAY_ENFORCEMENT_MODE", None),
        }

    def describe(self, result: dict[str, Any]) -> str:
        if result["enforcement_mode"]:
            return f"Tenant {result['slug']} enforcement mode: {result['enforcement_mode']}."
        return (
            f"Tenant {result['slug']} now inherits the global enforcement mode "
            f"({result['effective_mode']})."
        )
