"""Django's PostgreSQL backend, with a pool that never hands out a dead connection.

After a database restart or a network cut, every idle connection in a worker's pool is dead; unchecked,
each would fail the request that draws it, a 5xx after the database is back. Django's only option is
psycopg_pool's own check (`CONN_HEALTH_CHECKS`): a round trip on every checkout (two or more per
metered call), and on a failed check the pool sleeps a backoff (1 s, then 2 s, ...) before trying the
next connection, so a pool full of dead ones still times requests out. Here each checkout costs a
socket poll (about a microsecond), and the first dead connection found sweeps its idle siblings out
at once, without sleeping.
"""

from __future__ import annotations

import logging
import select
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

logger = logging.getLogger("gateway.db")

# Dead connections one checkout may draw before it gives up: the first, then at most a couple that were
# checked out during the sweep and came back unnoticed.
_CHECKOUT_ATTEMPTS = 3


def connection_alive(conn: psycopg.Connection) -> bool:
    """Whether an idle connection still works; a socket poll when it does.

    An idle connection has nothing to say, so its socket is not readable. A readable one got an
    end-of-file (the server or a proxy closed it), a FATAL (shutdown, terminated by an administrator)
    or a notice: only then is a round trip paid to tell which. A peer that vanished without closing
    (a silent network partition) is not seen here; TCP keepalives and timeouts are for that."""
    if conn.closed or conn.broken:
        return False
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    if not poller.poll(0):
        return True
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> psycopg.Connection:
        pool = self.pool
        for _ in range(_CHECKOUT_ATTEMPTS):
            connection = super().get_new_connection(conn_params)
            if pool is None or connection_alive(connection):
                return connection
            pool.putconn(connection)  # broken: the pool closes it and opens a replacement
            # Its idle siblings most likely died with it (one restart, one cut): test them all now,
            # rather than fail or wait out one checkout each.
            logger.warning("dead pooled connection discarded; checking the rest of the pool")
            pool.check()
        raise psycopg.OperationalError("the connection pool handed out only dead connections")
