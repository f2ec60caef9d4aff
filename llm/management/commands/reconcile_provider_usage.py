"""Compare a provider's own usage and cost report with the ledger, per UTC day and model.

    manage.py reconcile_provider_usage --provider openai|anthropic|gemini|grok --from DAY --to DAY [--json]

Exit status: 0 no drift; 4 drift over the threshold (super admins alerted); 1 the report could not be read
(no admin key, refused key, provider down: the run is recorded as FAILED); 3 the provider has no usage
report this command can read (Gemini, Grok: nothing recorded); argument errors as usual (1 / 2).
"""

from __future__ import annotations

import json
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from llm.reconcile.models import METRICS, ProviderReconciliation
from llm.reconcile.services import (
    ReconcileInputError,
    ReconcileUnsupported,
    provider_usage_reconcile,
    run_as_dict,
)

EXIT_FAILED, EXIT_UNSUPPORTED, EXIT_DRIFT = 1, 3, 4
SHORT = {"requests": "req", "tokens_in": "in", "tokens_cached_in": "cached", "tokens_cache_write": "cache_w",
         "tokens_out": "out", "cost_micro_usd": "cost_uUSD"}


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a day (YYYY-MM-DD): {value!r}") from None


class Command(BaseCommand):
    help = "Reconcile a provider's own usage/cost report with the ledger's daily rollup (per UTC day and model)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--provider", required=True, choices=["openai", "anthropic", "gemini", "grok"])
        parser.add_argument("--from", dest="day_from", required=True, help="first UTC day, YYYY-MM-DD")
        parser.add_argument("--to", dest="day_to", required=True, help="last UTC day (inclusive), YYYY-MM-DD")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        provider = options["provider"]
        day_from, day_to = _day(options["day_from"]), _day(options["day_to"])
        try:
            run = provider_usage_reconcile(provider=provider, day_from=day_from, day_to=day_to)
        except ReconcileUnsupported as exc:
            if options["json"]:
                self.stdout.write(json.dumps({"provider": provider, "status": "UNSUPPORTED", "message": str(exc)}))
            raise CommandError(str(exc), returncode=EXIT_UNSUPPORTED) from None
        except ReconcileInputError as exc:
            raise CommandError(str(exc)) from None
        run.refresh_from_db()
        if options["json"]:
            self.stdout.write(json.dumps(run_as_dict(run), indent=2))
        else:
            self._table(run)
        if run.status == ProviderReconciliation.Status.FAILED:
            raise CommandError(run.message, returncode=EXIT_FAILED)
        if run.status == ProviderReconciliation.Status.DRIFT:
            raise CommandError(f"{run.rows_drifted} of {run.rows_total} day/model rows drifted over the threshold "
                               f"(run {run.pk}; super admins {'alerted' if run.alerted_at else 'not emailed'})",
                               returncode=EXIT_DRIFT)

    def _table(self, run: ProviderReconciliation) -> None:
        out = self.stdout
        out.write(f"{run.provider} {run.day_from}..{run.day_to}: {run.get_status_display()} (run {run.pk})")
        if run.status == ProviderReconciliation.Status.FAILED:
            return
        if run.not_reported:
            out.write(f"not in {run.provider}'s report (not compared): {', '.join(run.not_reported)}")
        header = ["day", "model"] + [f"{SHORT[m]} ledger/provider" for m in METRICS] + ["drift"]
        out.write("\t".join(header))
        for row in run.rows.order_by("day", "model_name"):
            cells = [row.day.isoformat(), row.model_name]
            for figure in row.figures:
                theirs = "-" if figure["provider"] is None else str(figure["provider"])
                mark = "*" if figure["drifted"] else ""
                cells.append(f"{figure['ledger']}/{theirs}{mark}")
            cells.append(",".join(row.drifted) or "ok")
            out.write("\t".join(cells))
        if not run.rows_total:
            out.write("(no usage on either side)")
