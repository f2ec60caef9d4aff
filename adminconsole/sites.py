"""The Django Admin site of the gateway: Django's, with the staff sign-in rules of adminconsole.otp and
adminconsole.sso (two-factor for password logins, the single sign-on button, SSO-only when configured).
Installed as the default `admin.site` through adminconsole.admin_app.GatewayAdminConfig."""

from __future__ import annotations

from functools import update_wrapper

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from adminconsole import otp, sso
from tenants.audit import AuditSource, audit_context


class GatewayAdminSite(admin.AdminSite):
    login_form = otp.StaffLoginForm
    login_template = "adminconsole/login.html"

    def admin_view(self, view, cacheable=False):
        """Every admin page runs inside audit_context(actor=the staff user, source=ADMIN): the services
        the admins call to save, delete or act record who did it (tenants.audit)."""

        def audited(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            with audit_context(actor=request.user, source=AuditSource.ADMIN):
                return view(request, *args, **kwargs)

        return super().admin_view(update_wrapper(audited, view), cacheable)

    def has_permission(self, request: HttpRequest) -> bool:
        return otp.staff_session_ok(request)

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        next_url = request.GET.get("next") or request.POST.get("next") or ""
        context = {
            "sso_enabled": sso.enabled(),
            "sso_url": sso.login_url(next_url) if sso.enabled() else "",
            "password_login": sso.password_login_allowed(),
            "second_factor_missing": request.user.is_authenticated and otp.second_factor_missing(request),
            **(extra_context or {}),
        }
        return super().login(request, context)
