"""Activate (or re-activate) a tenant."""

from __future__ import annotations

from tenants import services
from tenants.management.commands._tenant_status import TenantStatusCommand


class Command(TenantStatusCommand):
    help = "Activate a tenant by slug (undoes suspend_tenant)."
    service = staticmethod(services.tenant_activate)
