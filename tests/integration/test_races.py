"""The enforcement issue's race tests: real parallel HTTP requests to uvicorn worker processes
against PostgreSQL. After each scenario `meters_reconcile` must report zero drift."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from catalog.models import Task
from llm.tokenizer import messages_tokens
from metering.alerts.models import QuotaAlert
from metering.models import UsageLog, UsageMeter, UsageReservation
from metering.services import meters_reconcile, policy_rule_set, reservations_expire
from metering.spool import spool_pending, spool_replay
from tenants.services import tenant_set_enforcement_mode
from tenants.tokens import tokens_for_user
from tests.integration.gateway_server import TcpProxy, gateway_server

TASK = "LLM1_PRIOR_ART"
MESSAGES = [{"role": "user", "content": "A hinge with a self-locking detent for folding patent drawings."}]
MAX_OUT = 10  # the offline provider writes at least 12 words, so every answer hits max_tokens exactly
PER_CALL_TOKENS = messages_tokens(MESSAGES) + MAX_OUT


def _post(base: str, token: str, *, body: dict | None = None, headers: dict | None = None, timeout: float = 30):
    return httpx.post(
        f"{base}/v1/{TASK}/chat/completions",
        json=body or {"model": "auto", "messages": MESSAGES, "max_tokens": MAX_OUT},
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
        timeout=timeout,
    )


def _fire(base: str, token: str, count: int, **kwargs) -> list[httpx.Response]:
    barrier = threading.Barrier(count)

    def one(_):
        barrier.wait()  # release every request at the same instant
        return _post(base, token, **kwargs)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def _unlimited_concurrency(tenant) -> None:
    policy_rule_set(scope="TENANT", tenant=tenant, task=Task.objects.get(code=TASK), key="max_concurrent", value=1000)


def _assert_no_holds_left(tenant) -> None:
    assert UsageMeter.objects.filter(tenant=tenant).aggregate(r=Sum("reserved"))["r"] == 0
    assert not UsageReservation.objects.filter(tenant=tenant, status=UsageReservation.Status.ACTIVE).exists()
    assert meters_reconcile() == []


@contextmanager
def _in_flight_recorder(tenant):
    """Poll the database from a separate connection while a burst runs: the most calls in flight."""
    from django.db import connection as thread_connection

    peak = {"active": 0}
    stop = threading.Event()

    def poll() -> None:
        try:
            while not stop.is_set():
                active = UsageReservation.objects.filter(tenant=tenant, status="ACTIVE").count()
                peak["active"] = max(peak["active"], active)
                time.sleep(0.005)
        finally:
            thread_connection.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        yield peak
    finally:
        stop.set()
        poller.join()


def test_quota_fitting_n_requests_admits_exactly_n_of_4n(postgres, tenant_admin):
    n = 5
    tenant = tenant_admin.tenant
    _unlimited_concurrency(tenant)
    policy_rule_set(scope="TENANT", tenant=tenant, key="tenant_tokens_per_day", value=n * PER_CALL_TOKENS)
    token = tokens_for_user(tenant_admin.user)["access"]
    with gateway_server(workers=2, CELERY_TASK_ALWAYS_EAGER="true") as server:
        responses = _fire(server.url, token, 4 * n)

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == n and len(refused) == 3 * n, [r.status_code for r in responses]
    assert {r.json()["error"]["code"] for r in refused} == {"quota_exceeded"}
    assert all(r.headers.get("Retry-After") for r in refused)
    meter = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="DAY")
    ledger = UsageLog.objects.filter(tenant=tenant, status="SUCCESS").aggregate(
        t=Sum(F("tokens_in") + F("tokens_out")))["t"]
    assert meter.used == ledger == n * PER_CALL_TOKENS
    assert meter.reserved == 0
    assert UsageLog.objects.filter(tenant=tenant, status="REFUSED", error_code="quota_exceeded").count() == 3 * n
    assert QuotaAlert.objects.filter(tenant=tenant, kind="QUOTA_EXCEEDED").count() == 1
    _assert_no_holds_left(tenant)


def test_max_concurrent_two_never_has_more_than_two_in_flight(postgres, tenant_admin):
    tenant = tenant_admin.tenant
    policy_rule_set(scope="TENANT", tenant=tenant, task=Task.objects.get(code=TASK), key="max_concurrent", value=2)
    token = tokens_for_user(tenant_admin.user)["access"]
    with gateway_server(workers=2, OFFLINE_PROVIDER_LATENCY_MS="400", CELERY_TASK_ALWAYS_EAGER="true") as server:
        with _in_flight_recorder(tenant) as peak:
            responses = _fire(server.url, token, 20)

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 20
    assert 2 <= len(ok) < 20
    assert {r.json()["error"]["code"] for r in refused} == {"concurrency_limit"}
    served = list(UsageLog.objects.filter(tenant=tenant, status="SUCCESS"))
    assert len(served) == len(ok)
    # The in-flight record: reservations are created at admission and completed at settlement.
    assert 1 <= peak["active"] <= 2
    assert QuotaAlert.objects.filter(tenant=tenant, kind="CONCURRENCY_LIMIT").count() == 1
    _assert_no_holds_left(tenant)


def test_disconnected_client_is_settled_not_leaked(postgres, tenant_admin):
    tenant = tenant_admin.tenant
    token = tokens_for_user(tenant_admin.user)["access"]
    with gateway_server(workers=1, OFFLINE_PROVIDER_LATENCY_MS="3000") as server:
        with pytest.raises(httpx.ReadTimeout):
            _post(server.url, token, timeout=0.5)
        deadline = time.monotonic() + 10
        while not UsageLog.objects.filter(tenant=tenant).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    log = UsageLog.objects.get(tenant=tenant)
    assert log.status == "CANCELLED" and log.error_code == "client_disconnected"
    _assert_no_holds_left(tenant)


def test_error_mid_call_charges_what_was_consumed_and_releases_the_rest(postgres, tenant_admin):
    tenant = tenant_admin.tenant
    token = tokens_for_user(tenant_admin.user)["access"]
    body = {"messages": [{"role": "user", "content": "please [offline:fail] now"}], "max_tokens": 40}
    with gateway_server(workers=1) as server:
        response = _post(server.url, token, body=body)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_overloaded"
    log = UsageLog.objects.get(tenant=tenant)
    assert log.status == "ERROR" and log.tokens_in > 0 and log.tokens_out > 0 and log.cost_micro_usd > 0
    meter = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="MONTH")
    assert meter.used == log.tokens_in + log.tokens_out
    _assert_no_holds_left(tenant)


def test_abandoned_reservation_is_released_by_expiry(postgres, tenant_admin):
    tenant = tenant_admin.tenant
    token = tokens_for_user(tenant_admin.user)["access"]
    with gateway_server(workers=1, OFFLINE_PROVIDER_LATENCY_MS="10000") as server:
        caller = threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, _post, server.url, token, timeout=20))
        caller.start()
        deadline = time.monotonic() + 10
        while not UsageReservation.objects.filter(tenant=tenant).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # the worker crashes mid-call: nobody will settle this reservation
        caller.join()
    reservation = UsageReservation.objects.get(tenant=tenant)
    assert reservation.status == "ACTIVE"
    assert UsageMeter.objects.filter(tenant=tenant).aggregate(r=Sum("reserved"))["r"] > 0
    assert reservations_expire(now=timezone.now()) == 0  # the lease is still running
    later = timezone.now() + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS + 1)
    assert reservations_expire(now=later) == 1
    assert reservations_expire(now=later) == 0  # idempotent
    # Expiry charges nothing and writes no ledger row (a call is in the ledger once, when it reports;
    # this one never will: its worker died).
    assert UsageReservation.objects.get(tenant=tenant).status == "EXPIRED"
    assert not UsageLog.objects.filter(tenant=tenant).exists()
    _assert_no_holds_left(tenant)


def test_same_idempotency_key_ten_times_at_once_is_charged_once(postgres, tenant_admin):
    tenant = tenant_admin.tenant
    _unlimited_concurrency(tenant)
    token = tokens_for_user(tenant_admin.user)["access"]
    with gateway_server(workers=2, OFFLINE_PROVIDER_LATENCY_MS="300") as server:
        responses = _fire(server.url, token, 10, headers={"Idempotency-Key": "draft-42"})
    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    log = UsageLog.objects.get(tenant=tenant)
    meter = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="MONTH")
    assert meter.used == log.tokens_in + log.tokens_out
    _assert_no_holds_left(tenant)


def test_shadow_mode_keeps_serving_and_loses_no_usage_while_the_database_is_down(postgres, tenant_admin, settings,
                                                                                  tmp_path):
    tenant = tenant_admin.tenant
    tenant_set_enforcement_mode(slug=tenant.slug, mode="SHADOW")
    settings.METERING_SPOOL_DIR = tmp_path
    token = tokens_for_user(tenant_admin.user)["access"]
    db_port = int(settings.DATABASES["default"].get("PORT") or 5432)
    proxy = TcpProxy("127.0.0.1", db_port)
    try:
        with gateway_server(workers=1, db_port=proxy.port, METERING_SPOOL_DIR=str(tmp_path)) as server:
            assert _post(server.url, token).status_code == 200  # warms identity and policy caches
            proxy.cut()
            during = _fire(server.url, token, 4)
            assert [r.status_code for r in during] == [200] * 4
            assert spool_pending() == 4
            proxy.restore()
    finally:
        proxy.close()
    assert UsageLog.objects.filter(tenant=tenant).count() == 1
    assert spool_replay() == 4
    assert spool_replay() == 0  # exactly once
    logs = UsageLog.objects.filter(tenant=tenant)
    assert logs.count() == 5 and set(logs.values_list("status", flat=True)) == {"SUCCESS"}
    assert {r.json()["id"].removeprefix("chatcmpl-") for r in during} <= set(logs.values_list("request_id", flat=True))
    meter = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="MONTH")
    assert meter.used == sum(x.tokens_in + x.tokens_out for x in logs)
    _assert_no_holds_left(tenant)


def test_openai_sdk_streams_through_the_gateway_and_a_disconnect_mid_stream_settles(postgres, tenant_admin):
    import openai

    tenant = tenant_admin.tenant
    _unlimited_concurrency(tenant)
    token = tokens_for_user(tenant_admin.user)["access"]
    long_prompt = [{"role": "user", "content": "Write at length about a hinge."}]
    with gateway_server(workers=1, OFFLINE_PROVIDER_LATENCY_MS="3000") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1/{TASK}", api_key=token, max_retries=0)
        pieces, usage = [], None
        for chunk in client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=MAX_OUT,
                                                    stream=True, stream_options={"include_usage": True}):
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        assert usage is not None and usage.completion_tokens == MAX_OUT == len("".join(pieces).split())

        # Now a client that reads a few words of a slow stream and hangs up.
        with httpx.stream("POST", f"{server.url}/v1/{TASK}/chat/completions",
                          json={"messages": long_prompt, "max_tokens": 200, "stream": True},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30) as response:
            received = 0
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                    received += 1
                    if received == 3:
                        break
        deadline = time.monotonic() + 10
        while UsageLog.objects.filter(tenant=tenant).count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    first, cancelled = UsageLog.objects.filter(tenant=tenant).order_by("id")
    assert (first.status, first.tokens_out) == ("SUCCESS", MAX_OUT)
    assert cancelled.status == "CANCELLED" and cancelled.error_code == "client_disconnected"
    assert 3 <= cancelled.tokens_out < 200  # charged for what was generated, not for the whole answer
    assert cancelled.usage_estimated
    _assert_no_holds_left(tenant)


def test_racing_requests_far_below_every_limit_are_never_refused(postgres, tenant_admin):
    """No false refusals: concurrent updates of the same meters must all see the latest counters."""
    tenant = tenant_admin.tenant
    _unlimited_concurrency(tenant)
    token = tokens_for_user(tenant_admin.user)["access"]
    with gateway_server(workers=2) as server:
        responses = _fire(server.url, token, 40)
    assert [r.status_code for r in responses] == [200] * 40, [r.text[:300] for r in responses if r.status_code != 200]
    assert UsageLog.objects.filter(tenant=tenant, status="SUCCESS").count() == 40
    _assert_no_holds_left(tenant)
