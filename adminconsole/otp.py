"""Two-factor (TOTP, django-otp) for staff password logins, and the one check every staff page runs.

A staff user with a confirmed TOTP device enters its current code with the password on the login page
(/admin/login/, which the console uses too). STAFF_REQUIRE_2FA (on in production) makes a device
mandatory for staff who log in with a password; SSO sessions are not asked (the identity provider
does its own second factor). Devices are enrolled with `manage.py staff_totp enroll <username>`.

`staff_session_ok` is the whole rule for /admin/ (the admin site's has_permission) and /console/
(`staff_required`): active staff, and for a password session: password logins allowed, and verified
with the device when the user has one or one is required. A session that stops meeting it (a device
enrolled since, 2FA switched on, SSO-only switched on) is sent back to the login page.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from adminconsole import sso

ENROLL_HINT = "An operator enrolls one with: manage.py staff_totp enroll <username>."


def totp_device_of(user, *, for_verify: bool = False) -> TOTPDevice | None:
    devices = TOTPDevice.objects.devices_for_user(user, confirmed=True).order_by("id")
    if for_verify:
        devices = devices.select_for_update()
    return devices.first()


def _verified(user) -> bool:
    is_verified = getattr(user, "is_verified", None)  # set by django_otp's OTPMiddleware
    return bool(is_verified and is_verified())


def second_factor_missing(request: HttpRequest) -> bool:
    """A password session of a staff user that still needs its TOTP code."""
    user = request.user
    if not (user.is_authenticated and user.is_staff) or sso.is_sso_session(request) or _verified(user):
        return False
    return settings.STAFF_REQUIRE_2FA or totp_device_of(user) is not None


def staff_session_ok(request: HttpRequest) -> bool:
    user = request.user
    if not (user.is_active and user.is_staff):
        return False
    if sso.is_sso_session(request):
        return sso.enabled()
    return sso.password_login_allowed() and not second_factor_missing(request)


def staff_required(view: Callable) -> Callable:
    """`staff_member_required` with the two-factor and SSO rules: anyone else goes to the login page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if staff_session_ok(request):
            return view(request, *args, **kwargs)
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))

    return wrapper


class StaffLoginForm(AdminAuthenticationForm):
    """The admin login form with the authentication code (checked only for users who need one)."""

    otp_token = forms.CharField(
        label="Authentication code", required=False, max_length=10, strip=True,
        help_text="Staff with two-factor: the 6-digit code from your authenticator app.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "password_off": "Staff sign in with single sign-on; password logins are switched off.",
        "device_required": "Two-factor authentication is required for staff, and this account has no "
                           "authenticator enrolled. " + ENROLL_HINT,
        "token_required": "Enter the 6-digit code from your authenticator app.",
        "invalid_token": "That authentication code is not valid (or was used already).",
        "throttled": "Too many wrong codes: wait a few seconds and try again.",
    }

    def confirm_login_allowed(self, user) -> None:
        super().confirm_login_allowed(user)  # active staff only
        if not sso.password_login_allowed():
            raise forms.ValidationError(self.error_messages["password_off"], code="password_off")
        problem = None
        with transaction.atomic():  # the device row is locked: one code, one login
            device = totp_device_of(user, for_verify=True)
            token = self.cleaned_data.get("otp_token") or ""
            if device is None:
                problem = "device_required" if settings.STAFF_REQUIRE_2FA else None
            elif not token:
                problem = "token_required"
            elif not device.verify_is_allowed()[0]:
                problem = "throttled"
            elif not device.verify_token(token):
                problem = "invalid_token"  # raised after the block: the failure count must commit
        if problem is not None:
            raise forms.ValidationError(self.error_messages[problem], code=problem)
        if device is not None:
            user.otp_device = device  # django_otp's user_logged_in handler keeps it in the session


# --------------------------------------------------------------------------------------- enrolment


class EnrolmentError(Exception):
    pass


@transaction.atomic
def staff_totp_enroll(*, user, name: str = "authenticator", replace: bool = False) -> TOTPDevice:
    """A confirmed TOTP device for a staff user; its secret is in the returned device's config_url only."""
    if not (user.is_staff and user.is_active):
        raise EnrolmentError(f"{user.get_username()} is not an active staff user.")
    existing = TOTPDevice.objects.filter(user=user)
    if existing.filter(confirmed=True).exists() and not replace:
        raise EnrolmentError(f"{user.get_username()} has a device already (--replace to swap it).")
    existing.delete()
    return TOTPDevice.objects.create(user=user, name=name, confirmed=True)


@transaction.atomic
def staff_totp_remove(*, user) -> int:
    deleted, _ = TOTPDevice.objects.filter(user=user).delete()
    return deleted
