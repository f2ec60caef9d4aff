"""Brute-force protection for login and signup: attempts per username and per client address."""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request

from gateway_project.errors import TooManyRequests


def client_address(request: Request) -> str:
    return request.META.get("REMOTE_ADDR", "unknown")


def auth_attempt_register(*, action: str, subjects: dict[str, str]) -> None:
    """Count one attempt against each subject; refuse once any subject is over the limit."""
    window = settings.AUTH_THROTTLE_WINDOW_SECONDS
    limit = settings.AUTH_THROTTLE_ATTEMPTS
    now = time.time()
    for kind, value in subjects.items():
        if not value:
            continue
        key = f"auth-throttle:{action}:{kind}:{value.lower()}"
        # add() starts the window only once (its end is kept beside the counter); incr() is atomic on Redis.
        cache.add(f"{key}:ends", now + window, window)
        cache.add(key, 0, window)
        try:
            attempts = cache.incr(key)
        except ValueError:  # expired between add() and incr()
            cache.add(key, 1, window)
            attempts = 1
        remaining = max(1, math.ceil((cache.get(f"{key}:ends") or now + window) - now))
        # The file and database caches implement incr() as get + set with the backend's default
        # timeout, which would stretch or cut the window: put the window's own expiry back.
        cache.touch(key, remaining)
        if attempts > limit:
            raise TooManyRequests(
                f"Too many {action} attempts; try again later.", code="too_many_attempts", retry_after=remaining
            )
