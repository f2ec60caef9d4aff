"""Telling super admins that a provider's books and the ledger disagree.

Raised once per run with drift, after the run is committed: an ERROR in the log (logger
`gateway.reconcile`, already written by the service) and an email to every active super admin with an
address, as provider-credential alerts do (llm/provider_alerts.py). In-app notifications belong to a
tenant and super admins have none; the console's Reconciliation page flags the run too.
The run's `alerted_at` says whether the email went out.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

logger = logging.getLogger("gateway.reconcile")


def _usd(micro: int | None) -> str:
    return "-" if micro is None else f"${micro / 1_000_000:,.6f}"


def drift_alert(*, run_id: int) -> int:
    """Email the super admins about run `run_id`'s drift; the number of recipients (0: none had an address)."""
    from llm.reconcile.models import ProviderReconciliation
    from tenants.models import User

    run = ProviderReconciliation.objects.get(pk=run_id)
    recipients = sorted(set(User.objects.filter(is_superuser=True, is_active=True).exclude(email="")
                            .values_list("email", flat=True)))
    if not recipients:
        logger.warning("no active super admin has an email address: the drift of reconciliation run %d is in the "
                       "log and the console only", run.pk)
        return 0
    lines = []
    for row in run.rows.order_by("day", "model_name"):
        if not row.drifted:
            continue
        parts = []
        for figure in row.figures:
            if figure["drifted"]:
                fmt = _usd if figure["metric"] == "cost_micro_usd" else (lambda v: "-" if v is None else f"{v:,}")
                parts.append(f"{figure['metric']}: ledger {fmt(figure['ledger'])}, provider {fmt(figure['provider'])}")
        lines.append(f"  {row.day} {row.model_name}: " + "; ".join(parts))
    subject = (f"[LLM Gateway] {run.provider} billing differs from the ledger "
               f"({run.rows_drifted} day/model rows, {run.day_from}..{run.day_to})")
    body = (
        f"Reconciliation run {run.pk} compared {run.provider}'s own usage report with the gateway's ledger for "
        f"{run.day_from}..{run.day_to} (UTC days) and found figures over the drift threshold "
        f"({run.thresholds}):\n\n" + "\n".join(lines) + "\n\n"
        "A provider figure above the ledger's means calls the gateway did not meter (the key used elsewhere, "
        "a metering gap); below it, the ledger charged more than the provider billed. The provider's report for "
        "the current day may still be filling in. See the console's Reconciliation page."
    )
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    except Exception:  # the run and the log line are the record; a mail outage must not lose them
        logger.exception("could not email the drift alert of reconciliation run %d", run.pk)
        return 0
    ProviderReconciliation.objects.filter(pk=run.pk).update(alerted_at=timezone.now())
    return len(recipients)
