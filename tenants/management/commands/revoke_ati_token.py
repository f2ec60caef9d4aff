"""Revoke an ATI token: a tenant that signed up with it can no longer authenticate."""

from __future__ import annotations

from typing import Any

from tenants import services
from tenants.management.commands._base import GatewayCommand
from tenants.models import ATIToken


class Command(GatewayCommand):
    help = "Revoke an ATI token by its ATI id; the tenant that used it loses API access."

    def add_arguments(self, parser) -> None:
        parser.add_argument("ati_id", help="The ATI id (ati_...), not the secret.")

    def run(self, **options: Any) -> dict[str, Any]:
        was_revoked = ATIToken.objects.filter(pk=options["ati_id"], status=ATIToken.Status.REVOKED).exists()
        token = services.ati_token_revoke(ati_id=options["ati_id"])
        tenant = token.tenant
        return {
            "ati_id": token.pk, "status": token.status, "already_revoked": was_revoked,
            "tenant": tenant.slug if tenant else None,
        }

    def describe(self, result: dict[str, Any]) -> str:
        if result["already_revoked"]:
            text = f"ATI token {result['ati_id']} was already revoked."
        else:
            text = f"Revoked ATI token {result['ati_id']}."
        if result["tenant"]:
            text += f" Tenant {result['tenant']} can no longer authenticate with it."
        else:
            text += " It was never used for a signup."
        return text
