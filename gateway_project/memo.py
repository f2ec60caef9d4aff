"""Two-level read cache for rarely changing configuration (catalog, policy rules).

Values live in the shared cache under a generation key; a write bumps the generation and every
process sees it within `check_every` seconds (the writer's own process at once). Each process
keeps a small local copy so the hot path costs no cache round trip at all. Identity is *not*
cached this way: a revoked token must stop working everywhere on the next call.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import cache


class GenerationCache:
    def __init__(self, name: str, *, check_every: float = 1.0, ttl: int = 300, max_local: int = 10_000) -> None:
        self.name = name
        self.check_every = check_every
        self.ttl = ttl
        self.max_local = max_local
        self._generation: str | None = None
        self._checked_at = 0.0
        self._local: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def _gen_key(self) -> str:
        return f"{self.name}-gen"

    def generation(self) -> str:
        now = time.monotonic()
        if self._generation is None or now - self._checked_at > self.check_every:
            generation = cache.get(self._gen_key)
            if generation is None:
                cache.add(self._gen_key, uuid.uuid4().hex, None)  # racing processes agree on one
                generation = cache.get(self._gen_key)
            with self._lock:
                if generation != self._generation:
                    self._local.clear()
                self._generation, self._checked_at = generation, now
        return self._generation

    def invalidate(self) -> None:
        generation = uuid.uuid4().hex
        cache.set(self._gen_key, generation, None)
        with self._lock:
            self._local.clear()
            self._generation, self._checked_at = generation, time.monotonic()

    def _read(self, key: str) -> tuple[str, Any]:
        """(current generation, value or None): this process's copy, else the shared cache's."""
        generation = self.generation()
        try:
            return generation, self._local[(generation, key)]
        except KeyError:
            pass
        value = cache.get(f"{self.name}:{generation}:{key}")
        if value is not None:
            self._keep(generation, key, value)
        return generation, value

    def _keep(self, generation: str, key: str, value: Any) -> None:
        with self._lock:
            if len(self._local) >= self.max_local:
                self._local.clear()
            self._local[(generation, key)] = value

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        generation, value = self._read(key)
        if value is None:
            # Stored under the generation read before building: a change meanwhile moves the
            # generation on, and this value is never served.
            value = build()
            cache.set(f"{self.name}:{generation}:{key}", value, self.ttl)
            self._keep(generation, key, value)
        return value

    def peek(self, key: str) -> Any:
        """The value if this process or the shared cache holds it, else None; never builds it, so it
        never touches the database (safe on an event loop). Values are never None."""
        return self._read(key)[1]

    def clear_local(self) -> None:
        """Forget the local copies (tests: the shared cache was cleared under us)."""
        with self._lock:
            self._local.clear()
            self._generation = None
