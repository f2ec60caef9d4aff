"""Record the usage spooled (to Redis, or this host's disk) while the metering database was unreachable,
exactly once, whichever host and however many replayers run it."""

from __future__ import annotations

from typing import Any

from metering import spool
from tenants.management.commands._base import GatewayCommand


class Command(GatewayCommand):
    help = "Record spooled usage in the ledger and meters; each spooled call is recorded exactly once."

    def run(self, **options: Any) -> dict[str, Any]:
        recorded = spool.spool_replay()
        return {"recorded": recorded, "pending": spool.spool_pending()}

    def describe(self, result: dict[str, Any]) -> str:
        n = result["recorded"]
        text = f"Recorded {n} spooled call{'' if n == 1 else 's'}."
        if result["pending"]:
            text += f" {result['pending']} still pending."
        return text
