"""Benchmark the enforcement hot path against the configured database:
policy evaluation, admission (one transaction of conditional holds) and settlement.

On PostgreSQL it also prints the floor under admission + settlement: the same two round trips
doing next to nothing (one row written with an asynchronous commit, as admission commits, then one
written durably, as settlement commits). What the chain costs above that is the work itself."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections
from django.utils import timezone

from catalog.models import Task
from metering.bench import bench_data_delete, bench_tables_vacuum, bench_tenant_user
from metering.policy import policy_evaluate
from metering.services import CallOutcome, usage_admit, usage_settle
from tenants.selectors import identity_resolve


def _percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _floor(iterations: int) -> dict:
    """Admission's and settlement's round trips and commits without their work, on connections of
    their own (a scratch table, dropped afterwards). Single thread, prepared statements, as the
    hot path runs."""
    params = {**connection.get_connection_params(), "autocommit": True}
    table = "bench_floor_" + uuid.uuid4().hex[:8]
    with psycopg.connect(**params) as leased, psycopg.connect(**params) as durable:
        leased.execute("SET synchronous_commit = off")
        durable.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, amount bigint NOT NULL)")
        try:
            insert = f"INSERT INTO {table} (amount) VALUES (%s)"
            samples = []
            for i in range(iterations + 50):
                started = time.perf_counter()
                leased.execute(insert, [i], prepare=True)
                durable.execute(insert, [i], prepare=True)
                if i >= 50:  # warm-up: connections, prepared statements
                    samples.append(time.perf_counter() - started)
        finally:
            durable.execute(f"DROP TABLE {table}")
    return {"p50_us": int(statistics.median(samples) * 1e6), "p99_us": int(_percentile(samples, 99) * 1e6)}


class Command(BaseCommand):
    help = "Measure policy evaluation + admission + settlement (p50/p99 in microseconds, operations per second)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--iterations", type=int, default=2000)
        parser.add_argument("--threads", type=int, default=4, help="Concurrent workers on the same tenant.")
        parser.add_argument("--task", default="LLM2_DRAFT")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--keep", action="store_true", help="Keep the bench tenant's ledger rows.")

    def handle(self, *args, **options) -> None:
        if options["iterations"] < 10 or options["threads"] < 1:
            raise CommandError("--iterations must be >= 10 and --threads >= 1.")
        if not Task.objects.filter(code=options["task"]).exists():
            raise CommandError(f"Unknown task '{options['task']}' (run seed_catalog first).")
        user = bench_tenant_user()
        bench_data_delete(user.tenant)  # a run stopped half-way leaves its rows
        bench_tables_vacuum()
        context = identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=user.tenant.signup_ati_token_id)
        try:
            single = self._run(context, options["task"], options["iterations"], 1)
            contended = self._run(context, options["task"], options["iterations"], options["threads"])
        finally:
            if not options["keep"]:
                bench_data_delete(user.tenant)
        runs = {"single_thread": single, f"{options['threads']}_threads_same_tenant": contended}
        report = {"database": connection.vendor, **runs}
        if connection.vendor == "postgresql":
            report["floor_two_writes"] = _floor(options["iterations"])
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        self.stdout.write(f"database: {connection.vendor}")
        for name, figures in runs.items():
            self.stdout.write(f"\n{name}: {figures['operations']} operations, {figures['ops_per_second']} ops/s")
            for phase in ("policy", "admission", "settlement", "total"):
                self.stdout.write(f"  {phase:<11} p50 {figures[phase]['p50_us']:>8} us   "
                                  f"p99 {figures[phase]['p99_us']:>8} us")
        if "floor_two_writes" in report:
            floor = report["floor_two_writes"]
            self.stdout.write("\nfloor under admission + settlement (two round trips writing one row each, the "
                              "first committed asynchronously, the second durably; no work):")
            self.stdout.write(f"  {'total':<11} p50 {floor['p50_us']:>8} us   p99 {floor['p99_us']:>8} us")

    def _run(self, context, task_code: str, iterations: int, threads: int) -> dict:
        samples: dict[str, list[float]] = {"policy": [], "admission": [], "settlement": [], "total": []}
        lock = threading.Lock()
        per_thread = max(1, iterations // threads)

        def worker() -> None:
            local: dict[str, list[float]] = {k: [] for k in samples}
            try:
                for _ in range(per_thread):
                    t0 = time.perf_counter()
                    now = timezone.now()
                    decision = policy_evaluate(context=context, task_code=task_code, tokens_in=500,
                                               requested_max_tokens_out=500, now=now)
                    t1 = time.perf_counter()
                    admission = usage_admit(tenant_id=context.tenant_id, user_id=context.user_id, decision=decision,
                                            request_id="bench_" + uuid.uuid4().hex, mode="HARD", now=now)
                    t2 = time.perf_counter()
                    model = decision.candidates[0]
                    usage_settle(reservation_id=admission.reservation_id, outcome=CallOutcome(
                        status="SUCCESS", provider=model.provider, model_name=model.model_name,
                        model_class=model.model_class, tokens_in=500, tokens_out=321, api_calls=1,
                        cost_micro_usd=model.cost_micro_usd(tokens_in=500, tokens_out=321)))
                    t3 = time.perf_counter()
                    local["policy"].append(t1 - t0)
                    local["admission"].append(t2 - t1)
                    local["settlement"].append(t3 - t2)
                    local["total"].append(t3 - t0)
            finally:
                connections.close_all()
            with lock:
                for k, v in local.items():
                    samples[k].extend(v)

        # Warm-up: caches, prepared plans, meter rows.
        policy_evaluate(context=context, task_code=task_code, tokens_in=500, requested_max_tokens_out=500,
                        now=timezone.now())
        started = time.perf_counter()
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - started
        count = len(samples["total"])
        return {
            "operations": count,
            "ops_per_second": int(count / elapsed),
            **{k: {"p50_us": int(statistics.median(v) * 1e6), "p99_us": int(_percentile(v, 99) * 1e6)}
               for k, v in samples.items()},
        }
