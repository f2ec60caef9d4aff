"""Read side of the search price table (SearchSourcePrice), cached with the rest of the catalog."""

from __future__ import annotations

from catalog.models import SearchSourcePrice
from catalog.selectors import catalog_cache


def search_price_table() -> dict[tuple[str, str], int]:
    """(source, request kind) -> micro-USD per request. Missing pairs are free."""
    return catalog_cache.get("search_prices", lambda: {
        (p.source, p.request_kind): int(p.micro_usd) for p in SearchSourcePrice.objects.all()})


def search_price(table: dict[tuple[str, str], int], source: str, kind: str) -> int:
    return table.get((source, kind), 0)


def dearest_request_price(table: dict[tuple[str, str], int], sources: list[str]) -> int:
    """The most one request to any of these sources can cost (the worst-case hold per API call)."""
    return max((price for (source, _), price in table.items() if source in sources), default=0)
