"""The rollout report (issue 15 §1): what SHADOW and SOFT let through that HARD would have refused.

Reads the would-refuse rollup (`WouldRefuseDaily`, written at settlement by both holds backends), never
the ledger: per tenant and for all of them, by refusal code, by rule (the PolicyRule id and key that
would have refused), by day and by task, with the tokens and cost of those calls, and for each tenant
what switching it to HARD would have refused.

The rollup counts each call once in its code "" row, once per code in the code rows (key ""), and once
per reason in the others: a call over a token quota and a concurrency limit is under both codes, so the
by-code and by-rule tables need not add up to the calls. "Would have refused" is counted as the calls came: in HARD the first refusals would
have left their budget unused, so some later calls might have fitted. It is an upper bound.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum

from metering.models import PolicyRule, WouldRefuseDaily
from tenants.models import EnforcementMode, Tenant

_SUMS = ("calls", "tokens_in", "tokens_out", "api_calls", "cost_micro_usd")


def usd(micro_usd: int) -> str:
    """Integer micro-USD as dollars, exactly (no float)."""
    return f"${Decimal(int(micro_usd)) / 1_000_000:,.6f}"


def _amounts(row: dict[str, Any]) -> dict[str, Any]:
    sums = {name: int(row.get(name) or 0) for name in _SUMS}
    sums["tokens"] = sums["tokens_in"] + sums["tokens_out"]
    sums["cost_usd"] = usd(sums["cost_micro_usd"])
    return sums


def _zero() -> dict[str, Any]:
    return _amounts({})


def _rule_label(rule: PolicyRule | None, rule_id: int, key: str) -> str:
    if not rule_id:
        return f"{key or 'no rule'} (registry default)"
    if rule is None:
        return f"rule #{rule_id} {key} (deleted since)"
    subject = rule.plan or rule.tenant or rule.user or "global"
    task = rule.task.code if rule.task_id else "all tasks"
    inactive = "" if rule.is_active else ", inactive now"
    return f"rule #{rule_id} {rule.scope.lower()} {subject}: {rule.key} = {rule.value} ({task}{inactive})"


def effective_mode(tenant: Tenant) -> str:
    return tenant.enforcement_mode or settings.GATEWAY_ENFORCEMENT_MODE


def switch_summary(amounts: dict[str, Any]) -> str:
    return (f"Switching to HARD would have refused {amounts['calls']:,} calls / {amounts['tokens']:,} tokens / "
            f"{amounts['cost_usd']}.")


def rollout_report(*, tenant: Tenant | None = None, day_from: date, day_to: date) -> dict[str, Any]:
    """The report for one tenant or all, over the inclusive day range (validate it first:
    metering.selectors.usage_range). Every amount is an integer; cost in micro-USD (and as dollars)."""
    rows = WouldRefuseDaily.objects.filter(day__gte=day_from, day__lte=day_to)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    sums = {name: Sum(name) for name in _SUMS}
    calls = rows.filter(code="")
    codes = rows.exclude(code="").filter(policy_key="")
    reasons = rows.exclude(policy_key="")

    per_tenant = {r["tenant_id"]: _amounts(r) for r in calls.values("tenant_id").annotate(**sums)}
    by_day = defaultdict(list)
    total_by_day: dict[date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_SUMS, 0))
    for r in calls.values("tenant_id", "day").annotate(**sums).order_by("day"):
        by_day[r["tenant_id"]].append({"day": r["day"].isoformat(), **_amounts(r)})
        for name in _SUMS:
            total_by_day[r["day"]][name] += r[name] or 0
    by_task = defaultdict(list)
    total_by_task: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_SUMS, 0))
    for r in calls.values("tenant_id", "task__code").annotate(**sums).order_by("task__code"):
        by_task[r["tenant_id"]].append({"task": r["task__code"], **_amounts(r)})
        for name in _SUMS:
            total_by_task[r["task__code"]][name] += r[name] or 0
    by_code = defaultdict(list)
    total_by_code: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_SUMS, 0))
    for r in codes.values("tenant_id", "code").annotate(**sums).order_by("code"):
        by_code[r["tenant_id"]].append({"code": r["code"], **_amounts(r)})
        for name in _SUMS:
            total_by_code[r["code"]][name] += r[name] or 0
    rule_rows = list(reasons.values("tenant_id", "code", "rule_id", "policy_key").annotate(**sums)
                     .order_by("code", "policy_key", "rule_id"))
    rules = PolicyRule.objects.select_related("plan", "tenant", "user", "task").in_bulk(
        {r["rule_id"] for r in rule_rows if r["rule_id"]})
    by_rule = defaultdict(list)
    total_by_rule: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_SUMS, 0))
    for r in rule_rows:
        ident = {"code": r["code"], "rule_id": r["rule_id"], "policy_key": r["policy_key"],
                 "rule": _rule_label(rules.get(r["rule_id"]), r["rule_id"], r["policy_key"])}
        by_rule[r["tenant_id"]].append({**ident, **_amounts(r)})
        for name in _SUMS:
            total_by_rule[tuple(ident.items())][name] += r[name] or 0

    wanted = set(per_tenant)
    if tenant is not None:
        wanted.add(tenant.pk)
    else:  # tenants set to SHADOW or SOFT are listed even before they would have refused anything
        wanted |= set(Tenant.objects.filter(enforcement_mode__in=[EnforcementMode.SHADOW, EnforcementMode.SOFT])
                      .values_list("pk", flat=True))
    tenants = []
    for t in Tenant.objects.filter(pk__in=wanted).order_by("slug"):
        amounts = per_tenant.get(t.pk, _zero())
        tenants.append({
            "tenant": t.slug, "name": t.name, "enforcement_mode": t.enforcement_mode or "",
            "effective_mode": effective_mode(t), **amounts,
            "by_code": by_code[t.pk], "by_rule": by_rule[t.pk], "by_day": by_day[t.pk], "by_task": by_task[t.pk],
            "switch_to_hard": {"calls": amounts["calls"], "tokens": amounts["tokens"],
                               "cost_micro_usd": amounts["cost_micro_usd"], "cost_usd": amounts["cost_usd"],
                               "summary": switch_summary(amounts)},
        })
    total = _amounts({name: sum(t[name] for t in tenants) for name in _SUMS})
    return {
        "from": day_from.isoformat(), "to": day_to.isoformat(), "tenant": tenant.slug if tenant else None,
        "total": {
            **total, "summary": switch_summary(total),
            "by_code": [{"code": c, **_amounts(v)} for c, v in sorted(total_by_code.items())],
            "by_rule": [{**dict(k), **_amounts(v)} for k, v in total_by_rule.items()],
            "by_day": [{"day": d.isoformat(), **_amounts(v)} for d, v in sorted(total_by_day.items())],
            "by_task": [{"task": t, **_amounts(v)} for t, v in sorted(total_by_task.items())],
        },
        "tenants": tenants,
    }


# The flat rows of the report, for CSV (the command's --format csv): one row per tenant and breakdown.
CSV_COLUMNS = ["tenant", "effective_mode", "breakdown", "day", "task", "code", "rule_id", "policy_key", "rule",
               "calls", "tokens_in", "tokens_out", "tokens", "api_calls", "cost_micro_usd", "cost_usd"]


def rollout_report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    scopes = [("*", "", report["total"]), *((t["tenant"], t["effective_mode"], t) for t in report["tenants"])]
    for slug, mode, part in scopes:
        rows.append({"tenant": slug, "effective_mode": mode, "breakdown": "total", **part})
        for breakdown in ("by_code", "by_rule", "by_day", "by_task"):
            for item in part[breakdown]:
                rows.append({"tenant": slug, "effective_mode": mode, "breakdown": breakdown[3:], **item})
    return [{column: row.get(column, "") for column in CSV_COLUMNS} for row in rows]
