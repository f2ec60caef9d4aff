"""The usage spool in shared storage: calls that ran while the metering database was down are kept in
Redis (every gateway host's), on the writing host's disk only when Redis is down too, and replayed into
the ledger exactly once by whichever replayer runs, however many run at once and wherever they crash.

Each "host" is a spool client with its own local directory (METERING_SPOOL_DIR) and the same Redis. A
Redis that is down is a loopback port nothing listens on. The file spool alone (no Redis, the embedded
default) is tested in tests/metering/test_commands.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.utils import timezone

from metering.models import UsageLog, UsageMeter
from metering.spool import spool_pending, spool_replay, spool_write
from tests.conftest import require_postgres
from tests.metering.test_commands import admit, evaluate, run_json, success

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


class Hosts:
    """Switches this process between gateway hosts: same Redis and database, a local disk each."""

    def __init__(self, settings, tmp_path: Path) -> None:
        self.settings, self.tmp_path = settings, tmp_path
        self.redis_url = os.environ["REDIS_URL"]
        self.key = f"test-usage-spool:{uuid.uuid4().hex}"
        settings.METERING_SPOOL_REDIS_URL = self.redis_url
        settings.METERING_SPOOL_REDIS_KEY = self.key
        self.redis = redis.Redis.from_url(self.redis_url)

    def on(self, name: str, *, redis_down: bool = False) -> Path:
        directory = self.tmp_path / name
        self.settings.METERING_SPOOL_DIR = directory
        self.settings.METERING_SPOOL_REDIS_URL = _dead_redis_url() if redis_down else self.redis_url
        return directory

    def in_redis(self) -> set[str]:
        return {k.decode() for k in self.redis.hkeys(self.key)}


@pytest.fixture
def hosts(settings, tmp_path):
    hosts = Hosts(settings, tmp_path)
    yield hosts
    hosts.redis.delete(hosts.key)
    for claim in hosts.redis.scan_iter(f"{hosts.key}:*"):
        hosts.redis.delete(claim)


def _dead_redis_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: connections are refused
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def _spool(user, request_id: str, *, tokens_out: int = 100, now=None, **outcome) -> Path | None:
    """What the gateway's settlement does when the metering database is down (llm/gateway.py _settle)."""
    now = now or timezone.now()
    decision = evaluate(user, now=now)
    called = success(decision, tokens_out=tokens_out)
    for name, value in outcome.items():
        setattr(called, name, value)
    return spool_write(
        request_id=request_id, tenant_id=user.tenant_id, user_id=user.pk, task_id=decision.task.id,
        feature_code=decision.task.feature_code, mode="SHADOW", admitted_at=now, holds=decision.holds,
        outcome=called,
    )


def _assert_ledger_once_and_meters_agree(tenant, request_ids: set[str]) -> None:
    logs = list(UsageLog.objects.filter(tenant=tenant))
    assert sorted(log.request_id for log in logs) == sorted(request_ids)  # each exactly once
    tokens = UsageMeter.objects.get(tenant=tenant, user=None, task=None, metric="TOKENS", window="MONTH")
    assert tokens.used == sum(log.tokens_in + log.tokens_out for log in logs)
    assert run_json("reconcile_meters")["drifted"] == 0


def test_two_hosts_spool_to_redis_and_a_third_host_replays_every_call_once(tenant_admin, hosts):
    user = tenant_admin.user
    disk_a = hosts.on("host-a")
    for n in range(3):
        assert _spool(user, f"req-a{n}", tokens_out=10 + n) is None  # into Redis, not onto host a's disk
    disk_b = hosts.on("host-b")
    for n in range(2):
        assert _spool(user, f"req-b{n}", tokens_out=20 + n) is None
    assert not list(disk_a.glob("*")) and not list(disk_b.glob("*"))
    assert UsageLog.objects.count() == 0

    hosts.on("host-c")  # never wrote a record: sees them all
    assert spool_pending() == 5
    assert run_json("replay_usage_spool") == {"recorded": 5, "pending": 0}
    expected = {"req-a0", "req-a1", "req-a2", "req-b0", "req-b1"}
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, expected)
    assert hosts.in_redis() == set()
    assert run_json("replay_usage_spool") == {"recorded": 0, "pending": 0}
    hosts.on("host-a")
    assert spool_replay() == 0
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, expected)


def test_a_call_admitted_before_the_outage_is_settled_from_redis(tenant_admin, hosts):
    """Admitted while the database was up, spooled because settlement failed: the replay on another
    host settles that reservation (its holds become the actual usage) exactly once."""
    user = tenant_admin.user
    now = timezone.now()
    decision, admission = admit(user, "req-admitted", now=now)
    hosts.on("host-a")
    spool_write(request_id="req-admitted", tenant_id=user.tenant_id, user_id=user.pk, task_id=decision.task.id,
                feature_code=decision.task.feature_code, mode="HARD", admitted_at=now, holds=decision.holds,
                outcome=success(decision, tokens_out=50))
    hosts.on("host-b")
    assert spool_replay() == 1 and spool_replay() == 0
    log = UsageLog.objects.get(request_id="req-admitted")
    assert (log.reservation_id, log.tokens_in, log.tokens_out) == (admission.reservation_id, 100, 50)
    assert not UsageMeter.objects.filter(tenant=tenant_admin.tenant, reserved__gt=0).exists()
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-admitted"})


def test_a_call_whose_lease_expired_during_a_long_outage_is_still_charged_once(tenant_admin, hosts):
    """The database was down longer than the lease: expiry released the holds before the replay came.
    The replay settles the reservation late and charges what the call used."""
    from metering.services import reservations_expire

    user = tenant_admin.user
    now = timezone.now()
    decision, admission = admit(user, "req-long-outage", now=now)
    hosts.on("host-a")
    spool_write(request_id="req-long-outage", tenant_id=user.tenant_id, user_id=user.pk,
                task_id=decision.task.id, feature_code=decision.task.feature_code, mode="SOFT", admitted_at=now,
                holds=decision.holds, outcome=success(decision, tokens_out=60))
    assert reservations_expire(now=now + timedelta(hours=1)) == 1
    hosts.on("host-b")
    assert spool_replay() == 1 and spool_pending() == 0
    assert spool_replay() == 0
    log = UsageLog.objects.get(request_id="req-long-outage")
    assert (log.reservation_id, log.tokens_in + log.tokens_out, log.settled_late) == (admission.reservation_id,
                                                                                       160, True)
    assert not UsageMeter.objects.filter(tenant=tenant_admin.tenant, reserved__gt=0).exists()
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-long-outage"})


@pytest.mark.django_db(transaction=True)  # each replayer thread commits on its own connection
@pytest.mark.postgres
def test_two_replayers_in_parallel_threads_record_each_call_once(tenant_admin, hosts):
    # SQLite's shared in-memory test database locks whole tables ("database table is locked") where a
    # real SQLite file in WAL mode with IMMEDIATE transactions would make one writer wait.
    require_postgres("concurrent database connections")
    user = tenant_admin.user
    hosts.on("host-a")
    expected = {f"req-{n}" for n in range(24)}
    for request_id in sorted(expected):
        _spool(user, request_id)
    hosts.on("host-b")
    barrier, results, errors = threading.Barrier(2), [], []

    def replayer() -> None:
        try:
            barrier.wait()
            results.append(spool_replay())
        except Exception as error:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=replayer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 2
    assert sum(results) == 24
    assert spool_pending() == 0
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, expected)


def _replayer_process(hosts: Hosts, directory: Path, *, code: str = "", **env: str) -> subprocess.Popen:
    """Another gateway host's replayer: its own process, database connection and local disk."""
    from tests.integration.gateway_server import database_url

    script = (
        "import django, os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'gateway_project.settings'; "
        "django.setup(); " + (code or "from django.core.management import call_command; "
                              "call_command('replay_usage_spool', '--json')")
    )
    environment = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": hosts.redis_url,
                   "METERING_SPOOL_REDIS_KEY": hosts.key, "METERING_SPOOL_DIR": str(directory),
                   "LOG_LEVEL": "ERROR", **env}
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.django_db(transaction=True)  # the replayer processes read and write the committed database
@pytest.mark.postgres
def test_replayers_on_two_hosts_at_once_record_each_call_once(tenant_admin, hosts):
    require_postgres("replayer processes sharing the test database")
    import json

    user = tenant_admin.user
    hosts.on("host-a")
    expected = {f"req-{n}" for n in range(40)}
    for request_id in sorted(expected):
        _spool(user, request_id)
    replayers = [_replayer_process(hosts, hosts.tmp_path / f"replayer-{n}") for n in range(2)]
    outputs = [replayer.communicate(timeout=120) for replayer in replayers]
    assert [replayer.returncode for replayer in replayers] == [0, 0], outputs
    recorded = [json.loads(out)["recorded"] for out, _ in outputs]
    assert sum(recorded) == 40
    assert hosts.in_redis() == set()
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, expected)


def test_redis_down_at_write_time_spools_to_the_hosts_disk_and_that_host_replays_it(tenant_admin, hosts):
    user = tenant_admin.user
    disk_a = hosts.on("host-a", redis_down=True)
    path = _spool(user, "req-on-disk", tokens_out=70, max_tokens_fitted=70)
    assert path is not None and path.parent == disk_a and path.exists()
    assert spool_pending() == 1  # Redis is still down: this host's files are counted

    hosts.on("host-a")  # Redis is back; the database too
    assert spool_pending() == 1 and hosts.in_redis() == set()
    assert run_json("replay_usage_spool") == {"recorded": 1, "pending": 0}
    assert not path.exists()
    assert spool_replay() == 0
    log = UsageLog.objects.get(request_id="req-on-disk")
    assert (log.tokens_out, log.max_tokens_fitted, log.status) == (70, 70, UsageLog.Status.SUCCESS)
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-on-disk"})


def test_a_hosts_disk_records_move_to_redis_at_its_next_spool_write_so_any_host_replays_them(tenant_admin, hosts):
    user = tenant_admin.user
    disk_a = hosts.on("host-a", redis_down=True)
    _spool(user, "req-while-redis-down")
    hosts.on("host-a")  # Redis is back, the database still down: the next call spools to Redis
    assert _spool(user, "req-after-redis-back") is None
    assert not list(disk_a.glob("*.json"))
    assert hosts.in_redis() == {"req-while-redis-down", "req-after-redis-back"}

    hosts.on("host-b")  # host a may be gone by now: nothing of it is needed
    assert spool_replay() == 2
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-while-redis-down", "req-after-redis-back"})


class _Crash(BaseException):
    """The replayer dies here: nothing after this point runs."""


def test_a_replay_that_crashes_after_commit_before_removing_the_record_counts_it_once(tenant_admin, hosts,
                                                                                       monkeypatch):
    user = tenant_admin.user
    hosts.on("host-a")
    _spool(user, "req-crash", tokens_out=40)

    def crash(*args, **kwargs):
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(redis.Redis, "hdel", crash)  # the commit happened; removing the record never does
        with pytest.raises(_Crash):
            spool_replay()
    assert UsageLog.objects.filter(request_id="req-crash").count() == 1
    assert hosts.in_redis() == {"req-crash"}

    hosts.on("host-b")
    assert run_json("replay_usage_spool") == {"recorded": 0, "pending": 0}
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-crash"})


@pytest.mark.django_db(transaction=True)  # the crashing replayer is another process
@pytest.mark.postgres
def test_a_replayer_process_killed_after_commit_leaves_no_stranded_claim_and_no_double_count(tenant_admin, hosts):
    require_postgres("a replayer process sharing the test database")
    user = tenant_admin.user
    hosts.on("host-a")
    _spool(user, "req-killed", tokens_out=40)
    # The process dies between the commit and the removal, holding its claim on the record.
    dies = ("import redis; redis.Redis.hdel = lambda *a, **k: os._exit(17); "
            "from metering.spool import spool_replay; spool_replay()")
    replayer = _replayer_process(hosts, hosts.tmp_path / "host-b", code=dies, METERING_SPOOL_CLAIM_SECONDS="2")
    assert replayer.wait(timeout=60) == 17, replayer.stderr.read()
    assert UsageLog.objects.filter(request_id="req-killed").count() == 1
    claim = f"{hosts.key}:claim:req-killed"
    assert hosts.in_redis() == {"req-killed"} and hosts.redis.exists(claim)

    hosts.on("host-c")
    assert spool_replay() == 0 and spool_pending() == 1  # claimed: left alone while the claim lasts
    deadline = time.monotonic() + 10
    while hosts.redis.exists(claim) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool_replay() == 0 and spool_pending() == 0  # the claim expired: removed, not recorded again
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-killed"})


@pytest.mark.django_db(transaction=True)  # the failure shows at commit, where deferred foreign keys are checked
def test_a_record_that_cannot_be_recorded_stays_in_the_spool(tenant_admin, hosts):
    """A failure that is not "already recorded" must not drop the usage: it stays, pending and logged."""
    user = tenant_admin.user
    hosts.on("host-a")
    now = timezone.now()
    decision = evaluate(user, now=now)
    spool_write(request_id="req-no-user", tenant_id=user.tenant_id, user_id=user.pk + 10_000,
                task_id=decision.task.id, feature_code=decision.task.feature_code, mode="SHADOW", admitted_at=now,
                holds=[], outcome=success(decision))
    _spool(user, "req-fine")
    assert spool_replay() == 1
    assert hosts.in_redis() == {"req-no-user"} and spool_pending() == 1
    _assert_ledger_once_and_meters_agree(tenant_admin.tenant, {"req-fine"})


@pytest.mark.django_db(transaction=True)  # the gateway processes serve from the committed database
@pytest.mark.postgres
def test_two_gateway_hosts_cut_from_the_database_lose_no_usage_even_when_one_host_is_gone(tenant_admin, hosts):
    """End to end: two gateway hosts (uvicorn processes with their own disks) serve SHADOW calls while the
    database is cut away; one host then dies and its disk is wiped; a third host's replay charges every
    call exactly once."""
    require_postgres("gateway processes sharing the test database")
    import shutil

    import httpx

    from tenants.services import tenant_set_enforcement_mode
    from tenants.tokens import tokens_for_user
    from tests.integration.gateway_server import TcpProxy, gateway_server

    tenant = tenant_admin.tenant
    tenant_set_enforcement_mode(slug=tenant.slug, mode="SHADOW")
    token = tokens_for_user(tenant_admin.user)["access"]
    body = {"model": "auto", "messages": [{"role": "user", "content": "A hinge for patent drawings."}],
            "max_tokens": 10}

    def call(server) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/LLM2_DRAFT/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)

    disks = {name: hosts.tmp_path / name for name in ("host-a", "host-b")}
    db_port = int(connection.settings_dict.get("PORT") or 5432)
    proxy = TcpProxy("127.0.0.1", db_port)
    during: list[httpx.Response] = []
    try:
        with gateway_server(workers=1, db_port=proxy.port, METERING_SPOOL_DIR=str(disks["host-a"]),
                            METERING_SPOOL_REDIS_KEY=hosts.key) as host_a, \
             gateway_server(workers=1, db_port=proxy.port, METERING_SPOOL_DIR=str(disks["host-b"]),
                            METERING_SPOOL_REDIS_KEY=hosts.key) as host_b:
            assert call(host_a).status_code == call(host_b).status_code == 200  # warms their caches
            proxy.cut()
            with ThreadPoolExecutor(max_workers=5) as pool:  # each waits out its database timeout
                during = list(pool.map(call, (host_a, host_b, host_a, host_b, host_a)))
            assert [r.status_code for r in during] == [200] * 5
            host_a.kill()  # replaced: its processes die and its disk goes with them
            shutil.rmtree(disks["host-a"], ignore_errors=True)
            proxy.restore()
    finally:
        proxy.close()
    spooled = {r.json()["id"].removeprefix("chatcmpl-") for r in during}
    assert hosts.in_redis() == spooled and not list(disks["host-b"].glob("*.json"))
    assert UsageLog.objects.filter(tenant=tenant).count() == 2

    hosts.on("host-c")
    assert run_json("replay_usage_spool") == {"recorded": 5, "pending": 0}
    assert spool_replay() == 0
    logs = UsageLog.objects.filter(tenant=tenant)
    assert spooled <= set(logs.values_list("request_id", flat=True)) and logs.count() == 7
    assert set(logs.values_list("status", flat=True)) == {"SUCCESS"}
    assert not UsageMeter.objects.filter(tenant=tenant, reserved__gt=0).exists()
    _assert_ledger_once_and_meters_agree(tenant, set(logs.values_list("request_id", flat=True)))
