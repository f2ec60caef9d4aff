"""Usage of one tenant for a period, grouped by task, user, model or day, from the per-day rollup."""

from __future__ import annotations

import csv
import json
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from adminconsole.selectors import usage_report_rows
from tenants.models import Tenant

GROUPS = ["task", "user", "model", "day"]
FORMATS = ["table", "csv", "json"]


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(value) from None


iso_date.__name__ = "date (YYYY-MM-DD)"  # argparse names the type in its error message


class Command(BaseCommand):
    help = "Usage report: --tenant SLUG --from YYYY-MM-DD --to YYYY-MM-DD [--group-by task|user|model|day] " \
           "[--format table|csv|json]. Days are UTC and inclusive."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--from", dest="start", required=True, type=iso_date, help="First day, YYYY-MM-DD.")
        parser.add_argument("--to", dest="end", required=True, type=iso_date, help="Last day, YYYY-MM-DD.")
        parser.add_argument("--group-by", default="task", choices=GROUPS)
        parser.add_argument("--format", default="table", choices=FORMATS)

    def handle(self, *args, **options) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug '{options['tenant']}'.")
        start, end = options["start"], options["end"]
        if start > end:
            raise CommandError(f"--from ({start}) must not be after --to ({end}).")
        group_by = options["group_by"]
        rows = usage_report_rows(start=start, end=end, group_by=group_by, tenant_id=tenant.pk)
        columns = [group_by, "requests", "refused", "tokens_in", "tokens_out", "total_tokens", "tokens_cached_in",
                   "tokens_cache_write", "api_calls", "cost_micro_usd", "cost_usd"]
        fmt = options["format"]
        if fmt == "json":
            self.stdout.write(json.dumps({"tenant": tenant.slug, "from": start.isoformat(), "to": end.isoformat(),
                                          "group_by": group_by, "rows": rows}, indent=2))
        elif fmt == "csv":
            writer = csv.DictWriter(self.stdout, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            self._table(tenant, start, end, columns, rows)

    def _table(self, tenant: Tenant, start: date, end: date, columns: list[str], rows: list[dict]) -> None:
        self.stdout.write(f"Usage of {tenant.slug} ({tenant.name}) from {start} to {end} (UTC days, inclusive)")
        if not rows:
            self.stdout.write("No usage in this period.")
            return
        totals = {c: sum(r[c] for r in rows) for c in columns[1:-1]}
        totals[columns[0]] = "TOTAL"
        totals["cost_usd"] = f"{totals['cost_micro_usd'] / 1_000_000:.6f}"
        cells = [[str(r[c]) if c == columns[0] or c == "cost_usd" else f"{r[c]:,}" for c in columns]
                 for r in [*rows, totals]]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        line = "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(columns))
        self.stdout.write(line)
        self.stdout.write("-" * len(line))
        for n, row in enumerate(cells):
            if n == len(cells) - 1:
                self.stdout.write("-" * len(line))
            self.stdout.write("  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                                        for i, v in enumerate(row)))
