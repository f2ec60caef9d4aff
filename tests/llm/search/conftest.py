"""Shared pieces of the search-client tests: a counting `external` and a client per test."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


class Counter:
    """Stands in for AdapterRun.external: records (service, kind) of every request sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, service: str, kind: str, factory: Any) -> Any:
        self.calls.append((service, kind))
        return await factory()


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def fast_search(settings):
    settings.SEARCH_TIMEOUT_SECONDS = 5.0
    settings.SEARCH_RETRIES = 1
    settings.SEARCH_BACKOFF_SECONDS = 0
    settings.EPO_OPS_THROTTLE_PAUSE_SECONDS = 0


async def with_client(fn: Any) -> Any:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await fn(client)
