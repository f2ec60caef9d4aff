"""Single sign-on for staff (super admins and read-only staff) with the company's OpenID Connect provider.

On when OIDC_ISSUER, OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET are set. The provider's endpoints come
from its discovery document (fetched once per process, kept OIDC_DISCOVERY_CACHE_SECONDS) unless
OIDC_OP_*_ENDPOINT give them. mozilla-django-oidc runs the authorization code flow (state, nonce, PKCE);
this module adds what it leaves to the site: the ID token's issuer, audience and expiry are verified
(RS256 via the provider's JWKS), and staff rights come only from the configured groups
(OIDC_STAFF_GROUPS, OIDC_SUPERUSER_GROUPS) or verified email domains (OIDC_STAFF_EMAIL_DOMAINS).
Anyone else is refused and gets no account; an SSO user who no longer qualifies is deactivated.

SSO users are platform staff (no tenant), linked to the provider's account by (issuer, subject) --
never matched by email, so an address at the provider cannot open an existing password account.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

logger = logging.getLogger("gateway.sso")

BACKEND_PATH = "adminconsole.sso.StaffOIDCBackend"
_CALLBACK_MARK = "_gateway_sso_callback"
_REFUSAL = "_gateway_sso_refusal"

# Discovery-document keys of the endpoints, and the settings that override them.
_ENDPOINTS = {
    "authorization_endpoint": "OIDC_OP_AUTHORIZATION_ENDPOINT",
    "token_endpoint": "OIDC_OP_TOKEN_ENDPOINT",
    "userinfo_endpoint": "OIDC_OP_USER_ENDPOINT",
    "jwks_uri": "OIDC_OP_JWKS_ENDPOINT",
}


class SSOUnavailable(Exception):
    """The identity provider's discovery document could not be had."""


def enabled() -> bool:
    return bool(settings.OIDC_ISSUER and settings.OIDC_RP_CLIENT_ID and settings.OIDC_RP_CLIENT_SECRET)


def password_login_allowed() -> bool:
    """Staff password logins: always without SSO; with SSO unless OIDC_STAFF_PASSWORD_LOGIN is off."""
    return not enabled() or settings.OIDC_STAFF_PASSWORD_LOGIN


def is_sso_session(request: HttpRequest) -> bool:
    from django.contrib.auth import BACKEND_SESSION_KEY

    session = getattr(request, "session", None)  # a request that never went through the session middleware
    return session is not None and session.get(BACKEND_SESSION_KEY) == BACKEND_PATH


# ------------------------------------------------------------------------------------------ discovery

_discovered: dict[str, tuple[float, dict[str, Any]]] = {}
_discovery_lock = threading.Lock()


def discovery() -> dict[str, Any]:
    issuer = settings.OIDC_ISSUER
    with _discovery_lock:
        hit = _discovered.get(issuer)
        if hit is not None and time.monotonic() - hit[0] < settings.OIDC_DISCOVERY_CACHE_SECONDS:
            return hit[1]
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = requests.get(url, timeout=settings.OIDC_TIMEOUT, verify=settings.OIDC_VERIFY_SSL)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            logger.warning("OIDC discovery at %s failed: %s", url, exc)
            raise SSOUnavailable("The identity provider cannot be reached.") from exc
        # OIDC Discovery 4.3: the document's issuer must be the one configured, exactly.
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            logger.warning("OIDC discovery at %s names issuer %r, not %r", url,
                           document.get("issuer") if isinstance(document, dict) else None, issuer)
            raise SSOUnavailable("The identity provider's discovery document names another issuer.")
        _discovered[issuer] = (time.monotonic(), document)
        return document


def endpoint(key: str) -> str:
    explicit = getattr(settings, _ENDPOINTS[key], "")
    if explicit:
        return explicit
    value = discovery().get(key)
    if not value:
        raise SSOUnavailable(f"The identity provider's discovery document has no {key}.")
    return value


def discovery_clear() -> None:
    with _discovery_lock:
        _discovered.clear()


# --------------------------------------------------------------------------------------------- rights


def _groups(claims: dict[str, Any]) -> set[str]:
    value = claims.get(settings.OIDC_GROUPS_CLAIM)
    if isinstance(value, str):
        return {value}
    if isinstance(value, (list, tuple)):
        return {str(v) for v in value}
    return set()


def staff_rights(claims: dict[str, Any]) -> tuple[bool, bool] | None:
    """(is_staff, is_superuser) the claims earn, or None: not staff at all."""
    groups = _groups(claims)
    if groups & set(settings.OIDC_SUPERUSER_GROUPS):
        return True, True
    if groups & set(settings.OIDC_STAFF_GROUPS):
        return True, False
    email = str(claims.get("email") or "")
    domain = email.rpartition("@")[2].lower() if "@" in email else ""
    domains = {d.lower().lstrip("@") for d in settings.OIDC_STAFF_EMAIL_DOMAINS}
    verified = claims.get("email_verified") is True or not settings.OIDC_REQUIRE_VERIFIED_EMAIL
    if domain and domain in domains and verified:
        return True, False
    return None


def _refuse(request: HttpRequest, message: str, detail: str) -> None:
    setattr(request, _REFUSAL, message)
    logger.warning("Staff SSO refused: %s", detail)


# -------------------------------------------------------------------------------------------- backend


class StaffOIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, for staff only.

    Django builds a backend for every authenticate() call and for every request of an SSO session, so
    nothing here reaches the provider until a callback is being handled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.UserModel = get_user_model()

    OIDC_RP_IDP_SIGN_KEY = None

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:  # noqa: N802 (the base class's attribute names)
        return settings.OIDC_RP_CLIENT_ID

    @property
    def OIDC_RP_CLIENT_SECRET(self) -> str:  # noqa: N802
        return settings.OIDC_RP_CLIENT_SECRET

    @property
    def OIDC_RP_SIGN_ALGO(self) -> str:  # noqa: N802
        return settings.OIDC_RP_SIGN_ALGO

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:  # noqa: N802
        return endpoint("token_endpoint")

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:  # noqa: N802
        return endpoint("userinfo_endpoint")

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:  # noqa: N802
        return endpoint("jwks_uri")

    def authenticate(self, request: HttpRequest | None, **kwargs: Any):
        # Only the SSO callback view signs in here: never a password form that happens to carry ?code=.
        if request is None or not getattr(request, _CALLBACK_MARK, False) or not enabled():
            return None
        try:
            return super().authenticate(request, **kwargs)
        except SSOUnavailable as exc:
            _refuse(request, str(exc), str(exc))
        except SuspiciousOperation as exc:
            _refuse(request, "The identity provider's answer could not be verified.", str(exc))
        except (requests.RequestException, ValueError, KeyError) as exc:
            _refuse(request, "Single sign-on failed at the identity provider.", f"{type(exc).__name__}: {exc}")
        return None

    def _verify_jws(self, payload: str, key: Any) -> dict[str, Any]:
        """The signature (the configured algorithm only), and OIDC Core 3.1.3.7: issuer, audience, expiry."""
        try:
            alg = jwt.get_unverified_header(payload).get("alg")
        except jwt.PyJWTError as exc:
            raise SuspiciousOperation(f"ID token unreadable: {exc}")
        if alg != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation(f"ID token algorithm {alg!r} is not {self.OIDC_RP_SIGN_ALGO!r}")
        try:
            claims = jwt.decode(payload, key, algorithms=[alg], audience=self.OIDC_RP_CLIENT_ID,
                                issuer=settings.OIDC_ISSUER, leeway=settings.OIDC_CLOCK_SKEW_SECONDS,
                                options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise SuspiciousOperation(f"ID token rejected: {exc}")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.OIDC_RP_CLIENT_ID:
            raise SuspiciousOperation("ID token has several audiences and is not authorized for this client")
        return claims

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        if not token:
            raise SuspiciousOperation("The token response has no ID token")
        return super().verify_token(token, **kwargs)

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]):
        userinfo = self.get_userinfo(access_token, id_token, payload)
        # OIDC Core 5.3.2: userinfo must be about the ID token's subject.
        if not isinstance(userinfo, dict) or userinfo.get("sub") != payload["sub"]:
            raise SuspiciousOperation("userinfo is about another subject than the ID token")
        claims = {**payload, **userinfo}
        claims[settings.OIDC_GROUPS_CLAIM] = sorted(_groups(payload) | _groups(userinfo))
        return staff_user_sign_in(request=self.request, issuer=payload["iss"], claims=claims)


def _username_for(claims: dict[str, Any], issuer: str) -> str:
    User = get_user_model()
    wanted = str(claims.get("preferred_username") or claims.get("email") or "")[:120]
    if wanted and not User.objects.filter(username__iexact=wanted).exists():
        return wanted
    digest = hashlib.sha256(f"{issuer}\n{claims['sub']}".encode()).hexdigest()[:12]
    return f"{wanted or 'sso'}-{digest}"[:150]


@transaction.atomic
def staff_user_sign_in(*, request: HttpRequest, issuer: str, claims: dict[str, Any]):
    """The staff user for verified claims (created, or updated to the rights the claims earn now),
    or None: refused. A linked user who no longer qualifies is deactivated (their sessions end)."""
    from adminconsole.models import SSOIdentity

    subject = str(claims["sub"])
    identity = (SSOIdentity.objects.select_for_update().select_related("user")
                .filter(issuer=issuer, subject=subject).first())
    rights = staff_rights(claims)
    who = f"sub={subject} email={claims.get('email')!r} groups={claims.get(settings.OIDC_GROUPS_CLAIM)}"
    if rights is None:
        if identity is not None and identity.user.is_active:
            identity.user.is_active = False
            identity.user.save(update_fields=["is_active"])
            logger.warning("Staff SSO user %s deactivated: no longer in a staff group or domain",
                           identity.user.username)
        _refuse(request, "Your account at the identity provider has no staff access to this gateway.",
                f"{who}: not in a staff group or domain")
        return None
    is_staff, is_superuser = rights
    fields = {"email": str(claims.get("email") or "")[:254], "first_name": str(claims.get("given_name") or "")[:150],
              "last_name": str(claims.get("family_name") or "")[:150]}
    if identity is None:
        user = get_user_model().objects.create_user(
            _username_for(claims, issuer), password=None, tenant=None, is_staff=is_staff, is_superuser=is_superuser,
            **fields)
        identity = SSOIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        logger.info("Staff SSO user %s created (superuser=%s) for %s", user.username, is_superuser, who)
    else:
        user = identity.user
        if user.tenant_id is not None:  # never a tenant's user, whatever the link says
            _refuse(request, "This account belongs to a tenant and cannot sign in as staff.", f"{who}: tenant user")
            return None
        user.is_staff, user.is_superuser, user.is_active = is_staff, is_superuser, True
        for name, value in fields.items():
            setattr(user, name, value)
        user.save(update_fields=["is_staff", "is_superuser", "is_active", *fields])
    identity.last_login_at = timezone.now()
    identity.save(update_fields=["last_login_at"])
    return user


# ---------------------------------------------------------------------------------------------- views


def login_url(next_url: str | None = None) -> str:
    url = reverse("oidc_authentication_init")
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


def _back_to_login(request: HttpRequest, message: str) -> HttpResponse:
    messages.error(request, message)
    return HttpResponseRedirect(reverse("admin:login"))


class StaffSSOLoginView(OIDCAuthenticationRequestView):
    """GET /oidc/authenticate/?next=...: off (404) without SSO; else to the provider's authorization endpoint."""

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the base reads the endpoint here: only once SSO is known to be on

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = endpoint("authorization_endpoint")
        except SSOUnavailable as exc:
            return _back_to_login(request, str(exc))
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


class StaffSSOCallbackView(OIDCAuthenticationCallbackView):
    """GET /oidc/callback/?code=...&state=...: the provider sends the browser back here."""

    @property
    def success_url(self) -> str:
        return self.request.session.get("oidc_login_next") or reverse("adminconsole:overview")

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("Single sign-on is not configured.")
        setattr(request, _CALLBACK_MARK, True)
        try:
            return super().get(request)
        except SuspiciousOperation as exc:  # a state this browser never started: forged or replayed
            _refuse(request, "This sign-in was not started here (unknown state); please start again.", str(exc))
            return self.login_failure()

    def login_success(self) -> HttpResponse:
        response = super().login_success()
        # The provider decides who is staff: an SSO session ends after a working day, then it asks again.
        self.request.session.set_expiry(settings.OIDC_SESSION_SECONDS)
        return response

    def login_failure(self) -> HttpResponse:
        if self.request.GET.get("error"):
            message = "The identity provider did not sign you in."
        else:
            message = getattr(self.request, _REFUSAL, None) or "Single sign-on failed; please start again."
        return _back_to_login(self.request, message)
