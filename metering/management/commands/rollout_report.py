"""The rollout report on the command line: what SHADOW/SOFT let through that HARD would have refused.

    manage.py rollout_report [--tenant SLUG] [--from DAY] [--to DAY] [--json | --format text|json|csv]
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from typing import Any

from django.core.management.base import CommandError
from django.utils import timezone

from metering.rollout import CSV_COLUMNS, rollout_report, rollout_report_rows
from metering.selectors import UsageRangeError, usage_range
from tenants.management.commands._base import GatewayCommand
from tenants.models import Tenant


def _day(value: str) -> date:
    return date.fromisoformat(value)


_day.__name__ = "day (YYYY-MM-DD)"


class Command(GatewayCommand):
    help = ("Calls SHADOW/SOFT let through that HARD would have refused, by code, rule, day and task, with their "
            "tokens and cost (from the daily rollup). Default: the last 30 days, every tenant.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", help="One tenant's slug (default: every tenant, and the whole gateway).")
        parser.add_argument("--from", dest="day_from", type=_day, help="First day, UTC (default: 30 days before --to).")
        parser.add_argument("--to", dest="day_to", type=_day, help="Last day, UTC (default: today).")
        parser.add_argument("--format", choices=["text", "json", "csv"], default="text")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["json"]:
            options["format"] = "json"
        report = self.run(**options)
        if options["format"] == "json":
            self.stdout.write(json.dumps(report, sort_keys=True))
        elif options["format"] == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rollout_report_rows(report))
            self.stdout.write(out.getvalue(), ending="")
        else:
            self.stdout.write(self.describe(report))

    def run(self, **options: Any) -> dict[str, Any]:
        tenant = None
        if options.get("tenant"):
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant with slug '{options['tenant']}'.")
        try:
            day_from, day_to = usage_range(start=options.get("day_from"), end=options.get("day_to"),
                                           today=timezone.now().date())
        except UsageRangeError as exc:
            raise CommandError(str(exc)) from None
        return rollout_report(tenant=tenant, day_from=day_from, day_to=day_to)

    def describe(self, report: dict[str, Any]) -> str:
        lines = [f"Rollout report {report['from']} .. {report['to']}"
                 f"{' for ' + report['tenant'] if report['tenant'] else ''}",
                 f"Whole {'tenant' if report['tenant'] else 'gateway'}: {report['total']['summary']}"]
        for t in report["tenants"]:
            lines.append(f"\n{t['tenant']} (mode {t['effective_mode']}"
                         f"{'' if t['enforcement_mode'] else ', inherited'}): {t['switch_to_hard']['summary']}")
            for row in t["by_code"]:
                lines.append(f"  code {row['code']}: {row['calls']} calls, {row['tokens']} tokens, {row['cost_usd']}")
            for row in t["by_rule"]:
                lines.append(f"  {row['code']} by {row['rule']}: {row['calls']} calls, {row['tokens']} tokens, "
                             f"{row['cost_usd']}")
            for row in t["by_day"]:
                lines.append(f"  {row['day']}: {row['calls']} calls, {row['tokens']} tokens, {row['cost_usd']}")
        return "\n".join(lines)
