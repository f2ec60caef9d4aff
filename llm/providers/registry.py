"""Which providers are configured in this process (credentials present), by provider name."""

from __future__ import annotations

from functools import cache

from llm.providers.base import Provider
from llm.providers.offline import OfflineProvider


@cache
def _offline() -> OfflineProvider:
    return OfflineProvider()


def provider_get(name: str) -> Provider | None:
    """The provider client, or None when it is not configured (no key / base URL)."""
    if name == "offline":
        return _offline()
    return None
