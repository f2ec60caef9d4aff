"""Suspend a tenant: its users are refused until it is activated again."""

from __future__ import annotations

from tenants import services
from tenants.management.commands._tenant_status import TenantStatusCommand


class Command(TenantStatusCommand):
    help = "Suspend a tenant by slug; its users' requests are refused until activate_tenant."
    service = staticmethod(services.tenant_suspend)
