"""Reads for reconciliation: the ledger's side (the daily rollup, never a ledger scan) and the console's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.db.models import Sum

from catalog.models import ProviderModel
from llm.reconcile.models import ProviderReconciliation, ProviderReconciliationRow
from metering.models import UsageDaily

# figure -> the UsageDaily column that holds it (`tokens_cached_in`: prompt-cache reads,
# `tokens_cache_write`: cache creation; both part of `tokens_in`). A column the rollup lacks reads as 0.
LEDGER_FIELDS = {"requests": "requests", "tokens_in": "tokens_in", "tokens_cached_in": "tokens_cached_in",
                 "tokens_cache_write": "tokens_cache_write", "tokens_out": "tokens_out",
                 "cost_micro_usd": "cost_micro_usd"}

RECONCILED_PROVIDERS = ("openai", "anthropic")


def _rollup_columns() -> dict[str, str]:
    present = {f.name for f in UsageDaily._meta.get_fields()}
    return {metric: column for metric, column in LEDGER_FIELDS.items() if column in present}


@dataclass
class LedgerUsage:
    day: date
    model: str
    figures: dict[str, int]


def provider_model_names(provider: str) -> set[str]:
    """The catalog's model names of a provider (active or not: old days may have used a retired one)."""
    return set(ProviderModel.objects.filter(provider=provider).values_list("model_name", flat=True))


def provider_model_names_shared(provider: str) -> set[str]:
    """Names the provider shares with another provider of the catalog: the rollup keeps the model name
    only, so their rows cannot be told apart and are counted for each provider that has the name."""
    names = provider_model_names(provider)
    return set(ProviderModel.objects.filter(model_name__in=names).exclude(provider=provider)
               .values_list("model_name", flat=True))


def ledger_usage(*, provider: str, day_from: date, day_to: date) -> dict[tuple[date, str], LedgerUsage]:
    """The ledger's usage of `provider` per UTC day and model, summed over tenants, users and tasks
    from the daily rollup (indexed by day)."""
    columns = _rollup_columns()
    names = provider_model_names(provider)
    rows = (UsageDaily.objects.filter(day__gte=day_from, day__lte=day_to, model_name__in=names)
            .values("day", "model_name").annotate(**{f"s_{m}": Sum(c) for m, c in columns.items()}))
    out: dict[tuple[date, str], LedgerUsage] = {}
    for row in rows:
        figures = {metric: int(row.get(f"s_{metric}") or 0) for metric in LEDGER_FIELDS}
        out[(row["day"], row["model_name"])] = LedgerUsage(row["day"], row["model_name"], figures)
    return out


def reconciliation_latest(*, provider: str) -> ProviderReconciliation | None:
    return ProviderReconciliation.objects.filter(provider=provider).order_by("-started_at", "-id").first()


def reconciliations_latest_per_provider() -> list[dict]:
    """For the console: the last run of each reconciled provider (None if never run), its drifted rows."""
    out = []
    for provider in RECONCILED_PROVIDERS:
        run = reconciliation_latest(provider=provider)
        drifted = [row for row in run.rows.order_by("day", "model_name") if row.drifted][:50] if run else []
        out.append({"provider": provider, "run": run, "drifted_rows": drifted})
    return out


def reconciliation_rows(*, run: ProviderReconciliation) -> list[ProviderReconciliationRow]:
    return list(run.rows.order_by("day", "model_name"))


def reconciliations_recent(*, limit: int = 20) -> list[ProviderReconciliation]:
    return list(ProviderReconciliation.objects.order_by("-started_at", "-id")[:limit])
