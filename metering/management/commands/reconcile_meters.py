"""Recompute every meter from the ledger and the active holds; report drift, and with --fix repair it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from metering import services
from tenants.management.commands._base import GatewayCommand


class Command(GatewayCommand):
    help = "Report meters whose used/reserved differ from the ledger and active holds; --fix corrects them."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--fix", action="store_true", help="Set each drifted meter to the recomputed values.")

    def run(self, **options: Any) -> dict[str, Any]:
        drifts = services.meters_reconcile(fix=options["fix"])
        return {"drifted": len(drifts), "fixed": bool(options["fix"]) and bool(drifts),
                "drifts": [asdict(d) for d in drifts]}

    def describe(self, result: dict[str, Any]) -> str:
        lines = [
            f"meter {d['meter_id']} ({d['metric']}/{d['window']}): used {d['used']} expected {d['expected_used']}, "
            f"reserved {d['reserved']} expected {d['expected_reserved']}"
            for d in result["drifts"]
        ]
        n = result["drifted"]
        summary = f"{n} meter{'' if n == 1 else 's'} drifted"
        if result["fixed"]:
            summary += f"; fixed {n}"
        return "\n".join([*lines, summary + "."])
