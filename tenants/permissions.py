from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.selectors import TenantContext


class IsTenantUser(BasePermission):
    def has_permission(self, request: Request, view) -> bool:
        return isinstance(request.auth, TenantContext)


class IsTenantAdmin(BasePermission):
    message = "Only tenant admins may do this."

    def has_permission(self, request: Request, view) -> bool:
        return isinstance(request.auth, TenantContext) and request.auth.is_tenant_admin
