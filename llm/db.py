"""Blocking database steps of the async request path.

Each step runs in a worker thread and hands its connections back (to the pool) when it ends,
so no connection is held while a provider is awaited: 1000 calls in flight must not hold 1000
database connections (DESIGN.md §5).

A step that finds the database down (a refused or dropped connection, a pool that could not hand one
out in time) raises `MeteringUnavailable`: a 503 with Retry-After in the error shape, wherever on the
metered path it happens (identity on a cache miss, the task lookup, the models list, admission and
settlement, which handle it themselves first: HARD refuses, SHADOW/SOFT fail open).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from gateway_project.errors import DATABASE_DOWN_ERRORS, MeteringUnavailable

logger = logging.getLogger("gateway.llm.db")


def release_db_connections() -> None:
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:  # tests wrap requests in a transaction: leave those alone
            conn.close()


def db_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DATABASE_DOWN_ERRORS as exc:
            # An outage, not a bug: one line per request, no traceback.
            logger.warning("database unavailable in %s: %s: %s", getattr(fn, "__qualname__", fn),
                           exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
            raise MeteringUnavailable() from exc
        finally:
            release_db_connections()

    # Not thread-sensitive: steps run on the event loop's small shared thread pool, which also
    # bounds how many connections one worker process uses at once (each step is self-contained:
    # its own transaction, connection released at the end).
    return sync_to_async(run, thread_sensitive=settings.DB_STEPS_THREAD_SENSITIVE)
