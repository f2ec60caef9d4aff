"""Brute-force protection for sign-in: failed attempts counted in the shared cache.

Only failures count, so a busy site behind one NAT or load balancer can sign in as often as it
likes. A failed password check counts against the username tried (known or not: a lockout must
not tell which usernames exist) and, when no such user exists, against the client address too
(guessing usernames from one address). `GATEWAY_LOGIN_FAILURE_LIMIT` failures within
`GATEWAY_LOGIN_FAILURE_WINDOW_SECONDS` lock the username, or the address, for
`GATEWAY_LOGIN_LOCKOUT_SECONDS`:

- a locked username is refused (429) before its password is checked, even the right one;
- a locked address still signs in with the right password (that is the NAT's other users), but
  every failure from it is a 429, for known and unknown usernames alike (no enumeration);
- a successful sign-in clears its username's count.

Signup counts failed ATI secrets per address the same way; a locked address may not try at all.

Why not django-axes: it counts through Django's `user_login_failed` signal and resets only on
`user_logged_in`, which a JWT view that never calls `login()` does not send; its DRF lockout is a
signal receiver raising from inside `authenticate()`; "per address only for unknown usernames"
needs a callable doing the user lookup anyway; its cache handler keeps no lockout end to put in
`Retry-After`; and it wants a middleware on every request, the metered path's included. The few
lines here do exactly what is asked, on the cache every process shares.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from rest_framework.request import Request

from gateway_project.errors import TooManyRequests


def client_address(request: Request | HttpRequest) -> str:
    """REMOTE_ADDR, or with N trusted proxies the Nth address from the right of X-Forwarded-For.

    Each trusted proxy appends the address it received the request from, so entries left of the
    Nth from the right are whatever the client sent and are never read. A header with fewer
    entries than trusted proxies did not come through all of them: REMOTE_ADDR it is (as
    werkzeug's ProxyFix does)."""
    remote = request.META.get("REMOTE_ADDR") or "unknown"
    trusted = settings.GATEWAY_TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [part for part in forwarded if part]
    if len(forwarded) < trusted:
        return remote
    candidate = forwarded[-trusted]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:  # our own proxy wrote something that is no address: do not key on it
        return remote


def _keys(scope: str, kind: str, value: str) -> tuple[str, str, str]:
    # Digests: usernames may hold any character, and need not sit in the cache in clear.
    digest = hashlib.sha256(value.lower().encode()).hexdigest()[:32]
    base = f"auth-failures:{scope}:{kind}:{digest}"
    return base, f"{base}:ends", f"auth-lockout:{scope}:{kind}:{digest}"


def _locked_for(lockout_key: str) -> int | None:
    """Seconds the lockout has left, or None."""
    ends = cache.get(lockout_key)
    if ends is None:
        return None
    remaining = math.ceil(ends - time.time())
    return remaining if remaining > 0 else None


def _refusal(what: str, retry_after: int) -> TooManyRequests:
    return TooManyRequests(
        f"Too many failed {what} attempts; try again later.", code="too_many_attempts", retry_after=retry_after
    )


def _failure_count(scope: str, kind: str, value: str) -> None:
    """Count one failure; the one that reaches the limit starts the lockout (and a fresh count)."""
    counter, ends_key, lockout_key = _keys(scope, kind, value)
    window = settings.GATEWAY_LOGIN_FAILURE_WINDOW_SECONDS
    now = time.time()
    # The window starts at the first failure; its end is kept beside the counter.
    cache.add(ends_key, now + window, window)
    if cache.add(counter, 1, window):
        failures = 1
    else:
        try:
            failures = cache.incr(counter)  # atomic on Redis
        except ValueError:  # expired since add()
            cache.add(counter, 1, window)
            failures = 1
        # The file and database caches implement incr() as get + set with the backend's default
        # timeout, which would stretch or cut the window: put the window's own expiry back.
        cache.touch(counter, max(1, math.ceil((cache.get(ends_key) or now + window) - now)))
    if failures >= settings.GATEWAY_LOGIN_FAILURE_LIMIT:
        lockout = settings.GATEWAY_LOGIN_LOCKOUT_SECONDS
        cache.set(lockout_key, now + lockout, lockout)
        cache.delete_many([counter, ends_key])


# --- password sign-in (the token endpoint, and the current-password check of a password change) ----


def login_lockout_check(*, username: str) -> None:
    """Refuse (429) a locked username before its password is checked."""
    retry_after = _locked_for(_keys("login", "username", username)[2])
    if retry_after is not None:
        raise _refusal("sign-in", retry_after)


def login_failure_record(*, username: str, address: str, username_exists: bool) -> None:
    """Count a failed password check. Raises 429 if the address was already locked; returns
    otherwise, and the caller answers with its own 401/400 (the failure that reaches a limit too:
    the attempts after it are refused)."""
    retry_after = _locked_for(_keys("login", "address", address)[2])
    _failure_count("login", "username", username)
    if not username_exists:
        _failure_count("login", "address", address)
    if retry_after is not None:
        raise _refusal("sign-in", retry_after)


def login_failures_clear(*, username: str) -> None:
    counter, ends_key, _ = _keys("login", "username", username)
    cache.delete_many([counter, ends_key])


# --- signup (guessing ATI secrets) -------------------------------------------------------------------


def signup_lockout_check(*, address: str) -> None:
    retry_after = _locked_for(_keys("signup", "address", address)[2])
    if retry_after is not None:
        raise _refusal("signup", retry_after)


def signup_failure_record(*, address: str) -> None:
    _failure_count("signup", "address", address)
