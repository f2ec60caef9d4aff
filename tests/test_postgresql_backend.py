"""gateway_project/postgresql: the pool never hands out a connection the server has closed.

The server ends the idle pooled connections itself here (pg_terminate_backend, as a restart does);
tests/integration/test_db_outage.py cuts them at the network under real gateway workers."""

from __future__ import annotations

import copy
import time

import psycopg
import pytest
from django.db import connection, connections
from django.db.utils import load_backend

from gateway_project.postgresql.base import connection_alive
from tests.conftest import require_postgres

pytestmark = pytest.mark.postgres


def _terminate(pids: list[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server ends them asynchronously
        with connection.cursor() as cursor:
            # Inside the test's transaction the statistics are a snapshot taken at their first read:
            # without clearing it, a backend that ended after that read would look alive for good.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.02)
    raise AssertionError("the backends were not terminated")


def test_a_connection_the_server_closed_is_not_alive(db):
    require_postgres()
    params = connections["default"].get_connection_params()
    params.pop("pool", None)
    with psycopg.Connection.connect(**params, autocommit=True) as conn:
        assert connection_alive(conn)
        conn.execute("SELECT 1")
        assert connection_alive(conn)  # a used connection with its result read is as quiet
        _terminate([conn.info.backend_pid])
        time.sleep(0.05)  # the FATAL and the close reach our socket
        assert not connection_alive(conn)


def test_a_pool_of_connections_the_server_closed_serves_the_next_checkout_at_once(transactional_db):
    require_postgres()
    params = copy.deepcopy(connections["default"].settings_dict)
    database = load_backend(params["ENGINE"]).DatabaseWrapper(params, alias="terminated_probe")
    try:
        database.ensure_connection()
        database.close()
        pool = database.pool
        held = [pool.getconn() for _ in range(4)]  # grow the pool to four idle connections
        pids = [conn.info.backend_pid for conn in held]
        for conn in held:
            pool.putconn(conn)
        _terminate(pids)
        time.sleep(0.05)

        started = time.monotonic()
        database.ensure_connection()
        with database.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        # A fresh connection, and no backoff sleep per dead one (psycopg_pool's own check sleeps 1 s,
        # then 2 s... between them; four dead ones would time the checkout out).
        assert pid not in pids
        assert time.monotonic() - started < 0.9
        database.close()
        # The dead siblings were swept out too: every connection the pool hands out now is alive.
        again = [pool.getconn() for _ in range(4)]
        try:
            assert all(conn.execute("SELECT 1").fetchone() == (1,) for conn in again)
            assert not {conn.info.backend_pid for conn in again} & set(pids)
        finally:
            for conn in again:
                pool.putconn(conn)
    finally:
        database.close()
        database.close_pool()
