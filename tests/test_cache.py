"""The Redis cache backend reuses one redis client per connection pool, from every thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import caches

from gateway_project.cache import RedisCache


@pytest.mark.redis
def test_one_redis_client_serves_every_cache_call_and_thread():
    backend = caches["default"]
    assert isinstance(backend, RedisCache)
    client = backend._cache.get_client()
    with ThreadPoolExecutor(4) as pool:
        others = list(pool.map(lambda _: backend._cache.get_client(write=True), range(8)))
    assert all(other is client for other in others)
    backend.set("one-client", 1)
    assert backend.get("one-client") == 1
