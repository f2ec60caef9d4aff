"""The console's Reconciliation page: the last run of `reconcile_provider_usage` per provider, flagged
when it drifted or failed, and the runs before it. Read-only: runs are made by the command."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from adminconsole.views import _page, console_view
from llm.reconcile import clients
from llm.reconcile import selectors as reconcile_selectors


@console_view
def reconciliation(request: HttpRequest) -> HttpResponse:
    context = {
        "section": "reconciliation",
        "latest": reconcile_selectors.reconciliations_latest_per_provider(),
        "recent": reconcile_selectors.reconciliations_recent(limit=20),
        "unsupported": sorted(clients.UNSUPPORTED.items()),
    }
    return _page(request, "reconciliation.html", context)
