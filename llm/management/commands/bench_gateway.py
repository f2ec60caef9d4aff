"""`make bench`: the gateway as it runs in production (uvicorn workers, PostgreSQL, Redis) in
front of a fake OpenAI upstream. Prints gateway overhead (gateway latency minus direct-to-upstream
latency, measured in one run) at concurrency 1 and 50, throughput, and — with a 500 ms upstream —
how many concurrent streaming requests it holds, with how many errors and PostgreSQL connections.
Beside the overhead it prints the floor under it: the overhead of a bare proxy making the same
`openai` SDK call and nothing else (llm/benchmark/bare_proxy.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from metering.bench import bench_data_delete, bench_tables_vacuum, bench_tenant_user
from metering.models import UsageLog
from metering.services import meters_reconcile
from tenants.tokens import tokens_for_user

ROOT = Path(settings.BASE_DIR)
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Draft claim 1 for a folding hinge."}],
        "max_tokens": 64}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve(app: str, *, workers: int, env: dict[str, str]):
    port = _port()
    # Keep-alive longer than the clients' (httpx and the SDK drop idle connections after 5 s): with
    # uvicorn's default of 5 s too, a client now and then reuses a connection at the instant the
    # server closes it and gets a ReadError, as behind a load balancer whose idle timeout is not
    # shorter than the server's.
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--no-access-log", "--log-level", "warning", "--backlog", "4096", "--limit-concurrency", "5000",
         "--timeout-keep-alive", "30"],
        cwd=ROOT, env={**os.environ, **env}, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise CommandError(f"{app} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class Command(BaseCommand):
    help = "Benchmark the gateway against a fake OpenAI upstream (needs PostgreSQL and Redis)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--requests", type=int, default=400, help="Requests per latency phase.")
        parser.add_argument("--concurrency", type=int, default=50)
        parser.add_argument("--inflight", type=int, default=1000, help="Concurrent streams with a 500 ms upstream.")
        parser.add_argument("--workers", type=int, default=2, help="Gateway worker processes.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        if connection.vendor != "postgresql" or not settings.REDIS_URL:
            raise CommandError("The benchmark runs the gateway as in production: set DATABASE_URL (PostgreSQL) "
                               "and REDIS_URL (make bench does).")
        user = bench_tenant_user()
        bench_data_delete(user.tenant)
        bench_tables_vacuum()
        token = tokens_for_user(user)["access"]
        gateway_env = {"SECRET_KEY": settings.SECRET_KEY, "OPENAI_API_KEY": "bench-key", "LOG_LEVEL": "ERROR",
                       "PROMETHEUS_MULTIPROC_DIR": str(Path(settings.VAR_DIR) / "prometheus-bench"),
                       "DB_POOL_MAX_SIZE": str(max(5, 40 // options["workers"]))}
        Path(gateway_env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        report: dict = {"gateway_workers": options["workers"]}
        with _serve("llm.benchmark.fake_openai:app", workers=1, env={"FAKE_UPSTREAM_LATENCY_MS": "0"}) as upstream, \
                _serve("gateway_project.asgi:application", workers=options["workers"],
                       env={**gateway_env, "OPENAI_BASE_URL": upstream + "/v1"}) as gateway, \
                _serve("llm.benchmark.bare_proxy:app", workers=options["workers"],
                       env={"OPENAI_BASE_URL": upstream + "/v1", "OPENAI_API_KEY": "bench-key"}) as bare:
            direct = (upstream + "/v1/chat/completions", {"Authorization": "Bearer bench-key"})
            via = (gateway + "/v1/LLM2_DRAFT/chat/completions", {"Authorization": f"Bearer {token}"})
            floor = (bare + "/v1/chat/completions", {})
            self._check(via)
            report["concurrency_1"] = asyncio.run(self._latency(direct, via, floor, options["requests"], 1))
            report[f"concurrency_{options['concurrency']}"] = asyncio.run(
                self._latency(direct, via, floor, options["requests"] * 3, options["concurrency"]))
        with _serve("llm.benchmark.fake_openai:app", workers=1, env={"FAKE_UPSTREAM_LATENCY_MS": "500"}) as upstream, \
                _serve("gateway_project.asgi:application", workers=options["workers"],
                       env={**gateway_env, "OPENAI_BASE_URL": upstream + "/v1"}) as gateway:
            via = (gateway + "/v1/LLM2_DRAFT/chat/completions", {"Authorization": f"Bearer {token}"})
            report["streaming_500ms_upstream"] = asyncio.run(self._inflight(via, options["inflight"]))
        served = UsageLog.objects.filter(tenant=user.tenant, status="SUCCESS").count()
        report["ledger_rows_success"] = served
        report["meters_drifted"] = len(meters_reconcile())
        bench_data_delete(user.tenant)
        self.stdout.write(json.dumps(report, indent=None if options["json"] else 2))

    def _check(self, via) -> None:
        response = httpx.post(via[0], json=BODY, headers=via[1], timeout=30)
        if response.status_code != 200 or response.json().get("model") != "gpt-4o":
            raise CommandError(f"The gateway did not serve gpt-4o through the fake upstream: "
                               f"{response.status_code} {response.text[:300]}")

    async def _latency(self, direct, via, floor, total: int, concurrency: int) -> dict:
        """Direct to the upstream, through the gateway and through the bare SDK proxy
        (llm/benchmark/bare_proxy.py), one after the other in one run."""
        limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            async def run(target) -> tuple[list[float], int, float]:
                samples: list[float] = []
                errors = 0
                queue = iter(range(total))

                async def worker() -> None:
                    nonlocal errors
                    for _ in queue:
                        started = time.perf_counter()
                        response = await client.post(target[0], json=BODY, headers=target[1])
                        samples.append(time.perf_counter() - started)
                        errors += response.status_code != 200

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return samples, errors, time.perf_counter() - started

            await run(via)  # warm-up: connections, caches, pools
            await run(floor)
            direct_samples, _, _ = await run(direct)
            via_samples, errors, elapsed = await run(via)
            floor_samples, _, _ = await run(floor)
        figures = {}
        for p in (50, 99):
            figures[f"direct_p{p}_ms"] = _ms(_pct(direct_samples, p))
            figures[f"gateway_p{p}_ms"] = _ms(_pct(via_samples, p))
            figures[f"overhead_p{p}_ms"] = round(figures[f"gateway_p{p}_ms"] - figures[f"direct_p{p}_ms"], 2)
        for p in (50, 99):
            # What a proxy that only makes the same SDK call costs: the floor under the overhead.
            figures[f"bare_sdk_proxy_overhead_p{p}_ms"] = round(_ms(_pct(floor_samples, p))
                                                                 - figures[f"direct_p{p}_ms"], 2)
        figures.update({"requests": total, "errors": errors, "gateway_throughput_rps": round(total / elapsed, 1),
                        "gateway_mean_ms": _ms(statistics.mean(via_samples))})
        return figures

    async def _inflight(self, via, count: int) -> dict:
        db_name = connection.settings_dict["NAME"]
        peak = {"in_flight": 0, "db_connections": 0}
        in_flight = 0
        done = asyncio.Event()

        def db_connections() -> int:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [db_name])
                return cursor.fetchone()[0] - 1  # not this benchmark's own connection

        async def watch() -> None:
            while not done.is_set():
                peak["db_connections"] = max(peak["db_connections"], await asyncio.to_thread(db_connections))
                await asyncio.sleep(0.02)

        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
        errors: list[str] = []
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            async def one() -> None:
                nonlocal in_flight
                in_flight += 1
                peak["in_flight"] = max(peak["in_flight"], in_flight)
                try:
                    async with client.stream("POST", via[0], json={**BODY, "stream": True,
                                             "stream_options": {"include_usage": True}}, headers=via[1]) as response:
                        if response.status_code != 200:
                            errors.append(f"status {response.status_code}")
                            return
                        last = ""
                        async for line in response.aiter_lines():
                            if line.startswith("data: "):
                                last = line
                                if '"error"' in line:
                                    errors.append(line[:200])
                        if last != "data: [DONE]":
                            errors.append("stream did not end with [DONE]")
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}")
                finally:
                    in_flight -= 1

            watcher = asyncio.create_task(watch())
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            elapsed = time.perf_counter() - started
            done.set()
            await watcher
        return {"streams": count, "max_concurrent_in_flight": peak["in_flight"], "errors": len(errors),
                "error_examples": sorted(set(errors))[:3], "max_db_connections": peak["db_connections"],
                "wall_seconds": round(elapsed, 2)}
