"""The shared cache of search answers: source + normalised query + filters -> hits.

It lives in the Django cache (Redis in production, the shared file cache in the embedded default), so
every process and every tenant reuses one answer for PRIOR_ART_CACHE_TTL_SECONDS: a cached answer
sends no request and costs no search fee. What is cached is the services' public bibliographic data
for a query, never a tenant's text beyond the query itself (the key is a hash).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from django.conf import settings
from django.core.cache import cache

from llm.search.common import Hit

logger = logging.getLogger("gateway.prior_art")
VERSION = "v1"  # bump when the cached hit shape changes


def normalise_query(query: str) -> str:
    return " ".join(query.lower().split())


def cache_key(source: str, query: str, filters: dict[str, Any]) -> str:
    material = json.dumps({"source": source, "q": normalise_query(query), "filters": filters}, sort_keys=True,
                          default=str)
    return f"search:answers:{VERSION}:{hashlib.sha256(material.encode()).hexdigest()}"


async def cached_hits(source: str, query: str, filters: dict[str, Any]) -> list[Hit] | None:
    try:
        value = await cache.aget(cache_key(source, query, filters))
    except Exception:  # a cache outage costs a request, never the search
        logger.warning("search cache unavailable (read)", exc_info=True)
        return None
    if not isinstance(value, list):
        return None
    hits = [Hit.from_cache(item) for item in value if isinstance(item, dict)]
    for hit in hits:
        hit.found_by = [query]
    return hits


async def store_hits(source: str, query: str, filters: dict[str, Any], hits: list[Hit]) -> None:
    ttl = settings.PRIOR_ART_CACHE_TTL_SECONDS
    if ttl <= 0:
        return
    try:
        await cache.aset(cache_key(source, query, filters), [h.to_cache() for h in hits], timeout=ttl)
    except Exception:
        logger.warning("search cache unavailable (write)", exc_info=True)
