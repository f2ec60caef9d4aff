"""The database goes away under running uvicorn workers and comes back (gateway issue 12, item 6).

A TCP proxy sits between the gateway and PostgreSQL; cutting it drops every connection (the idle pooled
ones included, which then sit dead in the workers' pools) and refuses new ones, as a database restart
or a network cut does. HARD answers 503 `metering_unavailable` with Retry-After, the Django API 503
`database_unavailable`, SHADOW keeps serving and spools its usage; once the proxy is back, no request
gets a 5xx and the meters agree with the ledger."""

from __future__ import annotations

import copy
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.core.management import call_command
from django.db import OperationalError, connections
from django.db.utils import load_backend

from catalog.models import Task
from metering.models import UsageLog
from metering.services import meters_reconcile, policy_rule_set
from metering.spool import spool_pending, spool_replay
from tenants.services import tenant_set_enforcement_mode
from tenants.tokens import tokens_for_user
from tests.integration.gateway_server import TcpProxy, gateway_server

TASK = "LLM2_DRAFT"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Draft a claim for a self-locking hinge."}],
        "max_tokens": 10}


def _chat(base: str, token: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/{TASK}/chat/completions", json=BODY,
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _get(base: str, path: str, token: str = "") -> httpx.Response:
    return httpx.get(base + path, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)


def _at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(calls))

    def one(call):
        barrier.wait()  # every request leaves at the same instant
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


def _statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


def _assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] == "api_error", error
    assert response.headers["Retry-After"] == "5"


def _proxy_to_postgres(settings) -> TcpProxy:
    return TcpProxy("127.0.0.1", int(settings.DATABASES["default"].get("PORT") or 5432))


def test_hard_refuses_with_503_while_the_database_is_down_and_nothing_fails_once_it_is_back(
        postgres, tenant_admin, member, outsider, settings, tmp_path):
    hard, shadow = tenant_admin.tenant, outsider.tenant
    tenant_set_enforcement_mode(slug=hard.slug, mode="HARD")
    tenant_set_enforcement_mode(slug=shadow.slug, mode="SHADOW")
    for tenant in (hard, shadow):
        policy_rule_set(scope="TENANT", tenant=tenant, task=Task.objects.get(code=TASK), key="max_concurrent",
                        value=1000)
    settings.METERING_SPOOL_DIR = tmp_path
    hard_token = tokens_for_user(tenant_admin.user)["access"]
    cold_token = tokens_for_user(member.user)["access"]  # not used before the cut: its identity is not cached
    shadow_token = tokens_for_user(outsider.user)["access"]
    proxy = _proxy_to_postgres(settings)
    try:
        with gateway_server(workers=2, db_port=proxy.port, METERING_SPOOL_DIR=str(tmp_path)) as server:
            base = server.url
            # Warm the caches, and leave several idle connections in each worker's pool for the cut to kill.
            assert _statuses(_at_once([lambda: _chat(base, hard_token)] * 12)) == [200] * 12
            assert _statuses(_at_once([lambda: _chat(base, shadow_token)] * 4)) == [200] * 4
            assert _get(base, "/api/quota/", hard_token).status_code == 200

            proxy.cut()
            hard_calls, cold_call, cold_models, quota, ready, *shadow_calls = _at_once(
                [lambda: _at_once([lambda: _chat(base, hard_token)] * 4)]  # admission on dead pooled connections
                + [lambda: _chat(base, cold_token),  # authentication falls back to the database
                   lambda: _get(base, f"/v1/{TASK}/models", cold_token),
                   lambda: _get(base, "/api/quota/", hard_token),  # Django + DRF
                   lambda: _get(base, "/readyz")]
                + [lambda: _chat(base, shadow_token)] * 3)
            for response in [*hard_calls, cold_call, cold_models]:
                _assert_unavailable(response, "metering_unavailable")
            _assert_unavailable(quota, "database_unavailable")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable"
            assert _statuses(shadow_calls) == [200] * 3  # SHADOW fails open...
            assert spool_pending() == 3  # ...and keeps what the calls used

            proxy.restore()
            assert _statuses(_at_once([lambda: _chat(base, hard_token)] * 20)) == [200] * 20
            assert _chat(base, cold_token).status_code == 200
            assert _get(base, f"/v1/{TASK}/models", cold_token).status_code == 200
            assert _get(base, "/api/quota/", hard_token).status_code == 200
            assert _get(base, "/readyz").status_code == 200

            # The database restarts between two requests: every idle connection in both workers' pools
            # (the burst above grew them) is dead, and none may fail a request.
            proxy.cut()
            time.sleep(0.2)
            proxy.restore()
            sequential = [_chat(base, hard_token) for _ in range(10)]
            assert _statuses(sequential) == [200] * 10, [r.text[:200] for r in sequential]
            concurrent = _at_once([lambda: _chat(base, hard_token)] * 10)
            assert _statuses(concurrent) == [200] * 10, [r.text[:200] for r in concurrent]
            assert _get(base, "/api/quota/", hard_token).status_code == 200
            assert _statuses([_chat(base, shadow_token) for _ in range(5)]) == [200] * 5
            assert spool_pending() == 3  # metered directly again: nothing more failed open
    finally:
        proxy.close()

    assert spool_replay() == 3
    # Every call that got a 200 is in the ledger once; none refused for the outage was charged.
    assert UsageLog.objects.filter(tenant=hard).count() == 12 + 20 + 1 + 10 + 10
    assert UsageLog.objects.filter(tenant=shadow).count() == 4 + 3 + 5
    assert set(UsageLog.objects.values_list("status", flat=True)) == {"SUCCESS"}
    out = io.StringIO()
    call_command("reconcile_meters", stdout=out)
    assert out.getvalue().strip() == "0 meters drifted."
    assert meters_reconcile() == []


def test_the_pool_reconnects_as_soon_as_the_database_is_back_after_a_long_outage(postgres, settings):
    """psycopg_pool retries a failed connection with a doubling delay; with its default 300 s reconnect
    timeout that delay reaches seconds, then minutes, and an emptied pool stays empty that long after
    the database is back. The configured pool gives up after DB_POOL_RECONNECT_TIMEOUT and reconnects
    on the next checkout."""
    proxy = _proxy_to_postgres(settings)
    params = copy.deepcopy(connections["default"].settings_dict)
    params.update(HOST="127.0.0.1", PORT=str(proxy.port))
    params["OPTIONS"]["pool"]["timeout"] = 1  # the configured pool, with a short wait per checkout
    database = load_backend(params["ENGINE"]).DatabaseWrapper(params, alias="outage_probe")
    try:
        database.ensure_connection()
        database.close()  # back to the pool
        proxy.cut()
        started = time.monotonic()
        while time.monotonic() - started < 8.5:  # requests keep coming during the outage
            with pytest.raises(OperationalError):
                database.ensure_connection()
        proxy.restore()
        restored = time.monotonic()
        while True:
            try:
                database.ensure_connection()
                break
            except OperationalError:
                assert time.monotonic() - restored < 20, "the pool never reconnected"
        recovered_in = time.monotonic() - restored
        with database.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        assert recovered_in < 2.0, f"the first connection came {recovered_in:.1f} s after the database was back"
    finally:
        database.close()
        database.close_pool()
        proxy.close()
