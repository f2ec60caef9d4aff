"""Reconcile a provider's own usage report with the ledger: compare, record the run, alert on drift."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from llm.crypto import CredentialDecryptionError
from llm.providers.scrub import scrub
from llm.reconcile import alerts, clients
from llm.reconcile.models import METRICS, ProviderAdminCredential, ProviderReconciliation, ProviderReconciliationRow
from llm.reconcile.selectors import ledger_usage, provider_model_names

logger = logging.getLogger("gateway.reconcile")

MAX_DAYS = 366
ADMIN_KEY_SETTINGS = {"openai": "OPENAI_ADMIN_API_KEY", "anthropic": "ANTHROPIC_ADMIN_API_KEY"}
BASE_URL_SETTINGS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


class ReconcileUnsupported(Exception):
    """The provider offers no usage report this gateway can read (the message says why)."""


class ReconcileInputError(Exception):
    """Bad arguments (unknown provider, a reversed or too long range)."""


@dataclass(frozen=True)
class Thresholds:
    percent: float
    requests: int
    tokens: int
    micro_usd: int

    @classmethod
    def from_settings(cls) -> Thresholds:
        return cls(percent=float(settings.RECONCILE_DRIFT_PERCENT), requests=int(settings.RECONCILE_DRIFT_REQUESTS),
                   tokens=int(settings.RECONCILE_DRIFT_TOKENS), micro_usd=int(settings.RECONCILE_DRIFT_MICRO_USD))

    def absolute(self, metric: str, *, ledger_requests: int) -> int:
        if metric == "requests":
            return self.requests
        if metric == "cost_micro_usd":
            # The ledger rounds each call up to the next micro-USD; the provider sums before rounding.
            return self.micro_usd + ledger_requests
        return self.tokens

    def drifts(self, metric: str, *, ledger: int, provider: int, ledger_requests: int) -> bool:
        diff = abs(provider - ledger)
        return diff > self.absolute(metric, ledger_requests=ledger_requests) and \
            diff * 100 > self.percent * max(abs(ledger), abs(provider))

    def as_dict(self) -> dict:
        return {"percent": self.percent, "requests": self.requests, "tokens": self.tokens, "micro_usd": self.micro_usd}


def admin_key_resolve(provider: str) -> tuple[str, str]:
    """(admin key, where it came from): the environment first, else the active admin credential.
    Raises clients.ReportError("no_key") when there is none."""
    key = getattr(settings, ADMIN_KEY_SETTINGS[provider], "") or ""
    if key:
        return key, "settings"
    credential = ProviderAdminCredential.objects.filter(provider=provider, is_active=True).first()
    if credential is not None:
        try:
            key = credential.admin_key()
        except CredentialDecryptionError:
            raise clients.ReportError("no_key", f"{provider}: the stored admin key cannot be decrypted with "
                                                "CREDENTIALS_ENCRYPTION_KEY") from None
        if key:
            return key, "credential"
    raise clients.ReportError("no_key", f"{provider}: no admin key: set {ADMIN_KEY_SETTINGS[provider]} or store an "
                                        "active admin credential (Django Admin, 'Provider admin credentials')")


def base_url_resolve(provider: str) -> str:
    """Where the provider's API is, as the model calls see it: the setting, else the active provider
    credential's base URL (a proxy in front of the vendor), else the vendor's."""
    from llm.models import ProviderCredential

    configured = getattr(settings, BASE_URL_SETTINGS[provider], "") or ""
    if not configured:
        credential = ProviderCredential.objects.filter(provider=provider, is_active=True).first()
        configured = credential.base_url if credential is not None else ""
    return configured or clients.DEFAULT_BASE_URLS[provider]


def _validate(provider: str, day_from: date, day_to: date) -> None:
    if provider in clients.UNSUPPORTED:
        raise ReconcileUnsupported(f"{provider}: {clients.UNSUPPORTED[provider]}")
    if provider not in clients.CLIENTS:
        known = ", ".join(sorted([*clients.CLIENTS, *clients.UNSUPPORTED]))
        raise ReconcileInputError(f"unknown provider {provider!r} (one of: {known})")
    if day_to < day_from:
        raise ReconcileInputError("--to is before --from")
    if (day_to - day_from) >= timedelta(days=MAX_DAYS):
        raise ReconcileInputError(f"at most {MAX_DAYS} days per run")


def provider_usage_reconcile(*, provider: str, day_from: date, day_to: date,
                             transport: httpx.BaseTransport | None = None) -> ProviderReconciliation:
    """Fetch the provider's report for the UTC days day_from..day_to, compare it per day and model
    with the daily rollup, record the run, and alert super admins if a figure drifted.
    A report that cannot be read is recorded as a FAILED run (its message scrubbed) and returned.
    `transport` is an httpx transport for tests; None sends real requests."""
    _validate(provider, day_from, day_to)
    started = timezone.now()
    thresholds = Thresholds.from_settings()
    key = ""
    try:
        key, _source = admin_key_resolve(provider)
        client = clients.CLIENTS[provider](api_key=key, base_url=base_url_resolve(provider),
                                           timeout=float(settings.RECONCILE_TIMEOUT_SECONDS), transport=transport)
        try:
            report = client.report(day_from, day_to)
        finally:
            client.close()
    except clients.ReportError as exc:
        message = scrub(exc.message, [key])
        logger.error("reconciliation of %s %s..%s failed (%s): %s", provider, day_from, day_to, exc.code, message)
        return ProviderReconciliation.objects.create(
            provider=provider, day_from=day_from, day_to=day_to, status=ProviderReconciliation.Status.FAILED,
            message=message, thresholds=thresholds.as_dict(), started_at=started, finished_at=timezone.now())
    return _record(provider=provider, day_from=day_from, day_to=day_to, report=report, thresholds=thresholds,
                   started=started)


@transaction.atomic
def _record(*, provider: str, day_from: date, day_to: date, report: clients.Report, thresholds: Thresholds,
            started: datetime) -> ProviderReconciliation:
    known = provider_model_names(provider)
    theirs: dict[tuple[date, str], dict] = {}
    for usage in report.rows.values():
        model = clients.model_canonical(usage.model, known)
        entry = theirs.setdefault((usage.day, model), {"names": set(), "figures": {}})
        entry["names"].add(usage.model)
        for metric in METRICS:
            value = getattr(usage, metric)
            if value is not None:
                entry["figures"][metric] = entry["figures"].get(metric, 0) + value
    ours = ledger_usage(provider=provider, day_from=day_from, day_to=day_to)

    run = ProviderReconciliation.objects.create(
        provider=provider, day_from=day_from, day_to=day_to, status=ProviderReconciliation.Status.OK,
        thresholds=thresholds.as_dict(), not_reported=list(report.not_reported), started_at=started,
        finished_at=started)
    totals = {metric: {"ledger": 0, "provider": 0} for metric in METRICS}
    rows: list[ProviderReconciliationRow] = []
    for day, model in sorted(set(theirs) | set(ours)):
        ledger = ours[(day, model)].figures if (day, model) in ours else dict.fromkeys(METRICS, 0)
        entry = theirs.get((day, model), {"names": set(), "figures": {}})
        row = ProviderReconciliationRow(run=run, day=day, model_name=model,
                                        provider_model_names=sorted(entry["names"]))
        drifted = []
        for metric in METRICS:
            provider_value = None if metric in report.not_reported else entry["figures"].get(metric, 0)
            setattr(row, f"ledger_{metric}", ledger[metric])
            setattr(row, f"provider_{metric}", provider_value)
            totals[metric]["ledger"] += ledger[metric]
            if provider_value is None:
                totals[metric]["provider"] = None
                continue
            if totals[metric]["provider"] is not None:
                totals[metric]["provider"] += provider_value
            if thresholds.drifts(metric, ledger=ledger[metric], provider=provider_value,
                                 ledger_requests=ledger["requests"]):
                drifted.append(metric)
        row.drifted = drifted
        rows.append(row)
    ProviderReconciliationRow.objects.bulk_create(rows)
    run.rows_total = len(rows)
    run.rows_drifted = sum(1 for r in rows if r.drifted)
    run.totals = totals
    run.status = ProviderReconciliation.Status.DRIFT if run.rows_drifted else ProviderReconciliation.Status.OK
    run.finished_at = timezone.now()
    run.save(update_fields=["rows_total", "rows_drifted", "totals", "status", "finished_at"])
    if run.rows_drifted:
        logger.error("reconciliation of %s %s..%s: %d of %d day/model rows drifted over the threshold (run %d)",
                     provider, day_from, day_to, run.rows_drifted, run.rows_total, run.pk)
        transaction.on_commit(lambda: alerts.drift_alert(run_id=run.pk))
    return run


def run_as_dict(run: ProviderReconciliation) -> dict:
    """The run as the command's --json prints it (and as tests read it)."""
    return {
        "id": run.pk, "provider": run.provider, "from": run.day_from.isoformat(), "to": run.day_to.isoformat(),
        "status": run.status, "message": run.message, "rows_total": run.rows_total,
        "rows_drifted": run.rows_drifted, "totals": run.totals, "thresholds": run.thresholds,
        "not_reported": run.not_reported, "alerted": run.alerted_at is not None,
        "rows": [{"day": r.day.isoformat(), "model": r.model_name, "provider_models": r.provider_model_names,
                  "drifted": r.drifted,
                  **{m: {"ledger": f["ledger"], "provider": f["provider"], "diff": f["diff"]}
                     for m, f in ((f["metric"], f) for f in r.figures)}}
                 for r in run.rows.order_by("day", "model_name")],
    }
