"""Release the holds of every reservation whose lease ran out (the Celery beat task does the same)."""

from __future__ import annotations

from typing import Any

from metering import services
from tenants.management.commands._base import GatewayCommand


class Command(GatewayCommand):
    help = "Release the holds of expired reservations (crashed workers, abandoned calls)."

    def run(self, **options: Any) -> dict[str, Any]:
        return {"released": services.reservations_expire()}

    def describe(self, result: dict[str, Any]) -> str:
        n = result["released"]
        return f"Released {n} expired reservation{'' if n == 1 else 's'}."
