"""Issue an ATI token for a plan. The secret is printed here once and only its hash is stored."""

from __future__ import annotations

from typing import Any

from tenants import services
from tenants.management.commands._base import GatewayCommand


class Command(GatewayCommand):
    help = "Issue an ATI token for a plan (e.g. --plan PRO). Prints the ATI id and the secret, once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--plan", required=True, help="A Plan.code, e.g. FREE, PRO, ENTERPRISE.")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after N days (default: never).")
        parser.add_argument("--note", default="", help="A free-text note kept with the token.")

    def run(self, **options: Any) -> dict[str, Any]:
        issued = services.ati_token_issue(
            plan_code=options["plan"], expires_days=options["expires_days"], note=options["note"]
        )
        token = issued.token
        return {
            "ati_id": token.pk,
            "secret": issued.secret,
            "plan": token.plan_tier,
            "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            "note": token.note,
        }

    def describe(self, result: dict[str, Any]) -> str:
        expires = result["expires_at"] or "never"
        return (
            f"Issued ATI token {result['ati_id']} for plan {result['plan']} (expires: {expires}).\n"
            f"Secret: {result['secret']}\n"
            "The secret is shown only this once and is not stored: hand it to the tenant admin now."
        )
