"""Bulk-generate tenants, users and a ledger history for load and console tests.

    manage.py generate_usage --tenants 1000 --days 365 --calls-per-day 12

Creates N tenants (each with its ATI token on a random active plan, one admin and some members),
then for each of the last D days (ending today, UTC) K ledger rows per tenant on the tasks and
model classes its plan grants, priced like real calls, plus the matching per-day rollup rows
(`UsageDaily`) and the tenant and user meters of the current day and month. Everything is written
with bulk_create (on PostgreSQL the two big tables, ledger and rollup, go through COPY, several times
faster): no admission, no settlement, no signals. Generated users have unusable passwords.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, models, transaction

from catalog.models import Plan, PlanLLMAccess, ProviderModel, Task
from metering.models import Metric, UsageDaily, UsageLog, UsageMeter, Window
from metering.periods import period_start
from tenants.models import ATIToken, EnforcementMode, Tenant, User

TENANTS_PER_TRANSACTION = 10


def positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


positive.__name__ = "positive whole number"


class Command(BaseCommand):
    help = "Generate tenants, users and D days of ledger history (+ rollups and current meters) in bulk."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenants", type=positive, required=True, help="How many tenants to create.")
        parser.add_argument("--days", type=positive, required=True, help="Days of history, ending today (UTC).")
        parser.add_argument("--calls-per-day", type=positive, default=12, help="Ledger rows per tenant and day.")
        parser.add_argument("--users-per-tenant", type=positive, default=3, help="One admin plus members.")
        parser.add_argument("--prefix", default="gen", help="Slug prefix of the generated tenants.")
        parser.add_argument("--seed", type=int, default=1, help="Random seed (same seed, same shape of data).")
        parser.add_argument("--batch-size", type=positive, default=2000)

    def handle(self, *args, **options) -> None:
        started = time.monotonic()
        rng = random.Random(options["seed"])
        plans = self._plans()
        tenants = self._tenants(options, rng, list(plans))
        self.stdout.write(f"Created {len(tenants)} tenants with {options['users_per_tenant']} users each "
                          f"({time.monotonic() - started:.1f}s).")
        rows = 0
        now = datetime.now(UTC)
        days = [now.date() - timedelta(days=i) for i in range(options["days"] - 1, -1, -1)]
        for start in range(0, len(tenants), TENANTS_PER_TRANSACTION):
            chunk = tenants[start:start + TENANTS_PER_TRANSACTION]
            with transaction.atomic():
                rows += self._ledger(chunk, plans, days, now, rng, options)
            if start and start % (TENANTS_PER_TRANSACTION * 20) == 0:
                self.stdout.write(f"  {start}/{len(tenants)} tenants, {rows:,} ledger rows "
                                  f"({time.monotonic() - started:.0f}s)")
        elapsed = time.monotonic() - started
        self.stdout.write(self.style.SUCCESS(
            f"Generated {len(tenants)} tenants, {rows:,} ledger rows over {len(days)} days in {elapsed:.1f}s "
            f"({rows / max(elapsed, 0.001):,.0f} rows/s)."
        ))

    # ------------------------------------------------------------------------------------ catalog
    def _plans(self) -> dict[str, dict[int, list[ProviderModel]]]:
        """plan code -> task id -> priced active provider models the plan grants for that task."""
        models_by_class: dict[int, list[ProviderModel]] = defaultdict(list)
        for model in ProviderModel.objects.filter(is_active=True).select_related("model_class"):
            if model.is_priced:
                models_by_class[model.model_class_id].append(model)
        plans: dict[str, dict[int, list[ProviderModel]]] = {}
        for plan in Plan.objects.filter(is_active=True):
            grants: dict[int, list[ProviderModel]] = {}
            for access in PlanLLMAccess.objects.filter(plan=plan).prefetch_related("model_classes"):
                candidates = [m for mc in access.model_classes.all() for m in models_by_class[mc.pk]]
                if candidates:
                    grants[access.task_id] = candidates
            if grants:
                plans[plan.code] = grants
        if not plans or not Task.objects.exists():
            raise CommandError("No active plan grants a priced model: run `manage.py seed_catalog` first.")
        return plans

    # ------------------------------------------------------------------------------------ tenants
    def _tenants(self, options, rng: random.Random, plan_codes: list[str]) -> list[tuple[Tenant, list[User]]]:
        prefix, count = options["prefix"], options["tenants"]
        taken = Tenant.objects.filter(slug__startswith=f"{prefix}-").count()
        unusable = make_password(None)
        result: list[tuple[Tenant, list[User]]] = []
        for start in range(0, count, 500):
            size = min(500, count - start)
            with transaction.atomic():
                tokens = ATIToken.objects.bulk_create([
                    ATIToken(id="ati_" + secrets.token_hex(12), plan_tier=rng.choice(plan_codes),
                             secret_hash=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                             note=f"generate_usage {prefix}")
                    for _ in range(size)
                ])
                tenants = []
                for offset, token in enumerate(tokens):
                    number = taken + start + offset + 1
                    while Tenant.objects.filter(slug=f"{prefix}-{number:05d}").exists():  # pragma: no cover
                        number += count
                    tenants.append(Tenant(name=f"{prefix.title()} Tenant {number:05d}", slug=f"{prefix}-{number:05d}",
                                          signup_ati_token=token,
                                          enforcement_mode=rng.choice([None, None, None, EnforcementMode.SOFT])))
                tenants = Tenant.objects.bulk_create(tenants)
                now = datetime.now(UTC)
                for token, tenant in zip(tokens, tenants, strict=True):
                    token.tenant, token.used_at = tenant, now
                ATIToken.objects.bulk_update(tokens, ["tenant", "used_at"])
                users = User.objects.bulk_create([
                    User(username=f"{tenant.slug}-u{j}", email=f"u{j}@{tenant.slug}.example", password=unusable,
                         tenant=tenant, role=User.Role.ADMIN if j == 0 else User.Role.MEMBER)
                    for tenant in tenants for j in range(options["users_per_tenant"])
                ])
                per = options["users_per_tenant"]
                result.extend((tenant, users[i * per:(i + 1) * per]) for i, tenant in enumerate(tenants))
        return result

    # ------------------------------------------------------------------------------------- ledger
    def _ledger(self, chunk, plans, days, now: datetime, rng: random.Random, options) -> int:
        calls = options["calls_per_day"]
        task_features = dict(Task.objects.values_list("pk", "feature__code"))
        logs: list[UsageLog] = []
        daily: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
        meters: dict[tuple, int] = defaultdict(int)
        day_start, month_start = period_start(Window.DAY, now), period_start(Window.MONTH, now)
        run = secrets.token_hex(4)
        for tenant, users in chunk:
            grants = plans[tenant.signup_ati_token.plan_tier]
            task_ids = list(grants)
            weights = [max(1, len(users) - i) for i in range(len(users))]  # the admin calls most
            mode = tenant.enforcement_mode or EnforcementMode.HARD
            for day in days:
                midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
                seconds = int((now - midnight).total_seconds()) if day == now.date() else 86_400
                for n in range(calls):
                    user = rng.choices(users, weights)[0]
                    task_id = rng.choice(task_ids)
                    model = rng.choice(grants[task_id])
                    admitted = midnight + timedelta(seconds=rng.randrange(max(seconds, 1)))
                    roll = rng.random()
                    if roll < 0.02:
                        status, model_name, tokens_in, tokens_out, api_calls, cost = "REFUSED", "", 0, 0, 0, 0
                    else:
                        status = "ERROR" if roll < 0.03 else "SUCCESS"
                        tokens_in = rng.randint(200, 6000)
                        tokens_out = rng.randint(50, 1500) if status == "SUCCESS" else 0
                        api_calls = rng.randint(1, 4)
                        model_name = model.model_name
                        cost = model.cost_micro_usd(tokens_in=tokens_in, tokens_out=tokens_out)
                    latency = rng.randint(150, 9000) if status != "REFUSED" else 0
                    logs.append(UsageLog(
                        request_id=f"{options['prefix']}-{run}-{tenant.pk}-{day.toordinal()}-{n}",
                        tenant_id=tenant.pk, user_id=user.pk, task_id=task_id,
                        feature_code=task_features[task_id],
                        provider=model.provider if model_name else "", model_name=model_name,
                        model_class=model.model_class.code if model_name else "", tokens_in=tokens_in,
                        tokens_out=tokens_out, api_calls=api_calls, cost_micro_usd=cost, latency_ms=latency,
                        status=status, error_code="provider_error" if status == "ERROR" else (
                            "quota_exceeded" if status == "REFUSED" else ""),
                        enforcement_mode=mode, admitted_at=admitted,
                        created_at=admitted + timedelta(milliseconds=latency),
                    ))
                    sums = daily[(tenant.pk, user.pk, task_id, model_name, day)]
                    refused = status == "REFUSED"
                    sums[0] += 0 if refused else 1
                    sums[1] += 1 if refused else 0
                    sums[2] += tokens_in
                    sums[3] += tokens_out
                    sums[4] += api_calls
                    sums[5] += cost
                    if refused:
                        continue
                    tokens = tokens_in + tokens_out
                    for window, start in ((Window.DAY, day_start), (Window.MONTH, month_start)):
                        if admitted >= start:
                            meters[(tenant.pk, None, Metric.TOKENS, window, start)] += tokens
                            meters[(tenant.pk, user.pk, Metric.TOKENS, window, start)] += tokens
                    if admitted >= month_start:
                        meters[(tenant.pk, None, Metric.COST, Window.MONTH, month_start)] += cost
                        meters[(tenant.pk, None, Metric.API_CALLS, Window.MONTH, month_start)] += api_calls
        _bulk_insert(UsageLog, logs, options["batch_size"])
        _bulk_insert(
            UsageDaily,
            [UsageDaily(tenant_id=k[0], user_id=k[1], task_id=k[2], model_name=k[3], day=k[4], requests=v[0],
                        refused=v[1], tokens_in=v[2], tokens_out=v[3], api_calls=v[4], cost_micro_usd=v[5])
             for k, v in daily.items()],
            options["batch_size"],
        )
        UsageMeter.objects.bulk_create(
            [UsageMeter(tenant_id=k[0], user_id=k[1], task=None, metric=k[2], window=k[3], period_start=k[4],
                        used=used, baseline=used) for k, used in meters.items()],  # no holds: all baseline
            batch_size=options["batch_size"], ignore_conflicts=True,
        )
        return len(logs)


def _bulk_insert(model: type[models.Model], rows: list[models.Model], batch_size: int) -> None:
    """bulk_create; on PostgreSQL a COPY of the same rows (no returned ids needed here)."""
    if connection.vendor != "postgresql":
        model.objects.bulk_create(rows, batch_size=batch_size)
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    json_fields = {f.attname for f in fields if isinstance(f, models.JSONField)}
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f"COPY {connection.ops.quote_name(model._meta.db_table)} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(getattr(row, f.attname)) if f.attname in json_fields
                                else getattr(row, f.attname) for f in fields])
