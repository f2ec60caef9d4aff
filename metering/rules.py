"""The metering rules that every implementation shares, defined once.

- metric -> the actual amount a call used (`CallOutcome.actual`, and the same rule as SQL for the
  PostgreSQL functions, generated from here: `actual_sql`);
- the alert thresholds (80 % warns, 100 % exceeded, 90 % of the concurrency slots);
- which refusal a crossed limit of each key kind gives.

metering/pg_functions.py writes these into its SQL at install, so the two paths cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metering.models import Metric
from metering.policy_keys import KeyKind

WARN_PERCENT, EXCEEDED_PERCENT, CONCURRENCY_PERCENT = 80, 100, 90

REFUSAL_BY_KIND = {KeyKind.QUOTA: "quota_exceeded", KeyKind.CONCURRENCY: "concurrency_limit",
                   KeyKind.RATE: "rate_limited"}
REFUSAL_ORDER = [KeyKind.QUOTA, KeyKind.CONCURRENCY, KeyKind.RATE]

# metric -> the outcome's fields whose sum is what the call used of it; a constant where the
# amount does not depend on the call (a request counts once; a concurrency slot is only held).
_ACTUAL: dict[str, tuple[str, ...] | int] = {
    Metric.TOKENS: ("tokens_in", "tokens_out"),
    Metric.COST: ("cost_micro_usd",),
    Metric.API_CALLS: ("api_calls",),
    Metric.REQUESTS: 1,
    Metric.CONCURRENT: 0,
}


@dataclass
class CallOutcome:
    status: str  # UsageLog.Status
    provider: str = ""
    model_name: str = ""
    model_class: str = ""
    tokens_in: int = 0  # all prompt tokens, cached ones included
    tokens_out: int = 0
    cost_micro_usd: int = 0
    tokens_cached_in: int = 0  # of tokens_in: read from the provider's prompt cache
    tokens_cache_write: int = 0  # of tokens_in: written to it
    search_fees_micro_usd: int = 0  # of cost_micro_usd: the priced outbound requests (prior-art search fees)
    api_calls: int = 0
    latency_ms: int = 0
    error_code: str = ""
    usage_estimated: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    response_status: int | None = None
    response_body: Any = None
    would_refuse_code: str = ""
    # Every reason HARD would have refused the call for, the returned one first: {"code", "key", "rule"}.
    would_refuse: list[dict[str, Any]] = field(default_factory=list)
    max_tokens_fitted: int | None = None  # budget fitting shrank max_tokens to this (None: it did not)

    def actual(self, metric: str) -> int:
        rule = _ACTUAL[metric]
        if isinstance(rule, int):
            return rule
        return sum(int(getattr(self, name)) for name in rule)


def actual_sql(metric_column: str, params: dict[str, str]) -> str:
    """The same rule as `CallOutcome.actual`, as a SQL CASE over a meter's metric column.
    `params` maps outcome field names to the SQL names that hold them."""
    branches = []
    for metric, rule in _ACTUAL.items():
        value = str(rule) if isinstance(rule, int) else " + ".join(params[name] for name in rule)
        branches.append(f"WHEN '{metric}' THEN {value}")
    return f"CASE {metric_column} {' '.join(branches)} ELSE 0 END"


# The daily rollup (UsageDaily) keeps, per subject and day, the sums of the same fields a call
# reports, and `requests`: the calls it admitted.
ROLLUP_SUMS = ("tokens_in", "tokens_out", "cost_micro_usd", "api_calls", "requests")


def rollup_amount(metric: str, sums: dict[str, int]) -> int:
    """What a rollup's sums hold of a metric: the rule of `CallOutcome.actual` summed over its calls
    (a per-call constant counts once per admitted call)."""
    rule = _ACTUAL[metric]
    if isinstance(rule, int):
        return rule * int(sums["requests"] or 0)
    return sum(int(sums[name] or 0) for name in rule)


def rollup_sql(metric_column: str, alias: str) -> str:
    """`rollup_amount` as a SQL CASE over a meter's metric column, for the rollup row `alias`."""
    branches = []
    for metric, rule in _ACTUAL.items():
        value = f"{rule} * {alias}.requests" if isinstance(rule, int) else " + ".join(f"{alias}.{n}" for n in rule)
        branches.append(f"WHEN '{metric}' THEN {value}")
    return f"CASE {metric_column} {' '.join(branches)} ELSE 0 END"


def would_refuse_rollup_rows(reasons: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """The (code, rule id, policy key) rows of the would-refuse rollup (WouldRefuseDaily) one call adds to,
    each once: the call's row (code ""), a row per code (key ""), a row per reason (code, rule and key).
    The PostgreSQL settlement writes the same rows (metering/pg_functions.py)."""
    if not reasons:
        return []
    rows = [("", 0, "")]
    for reason in reasons:
        code = str(reason["code"])
        for row in ((code, 0, ""), (code, int(reason.get("rule") or 0), str(reason.get("key") or ""))):
            if row not in rows:
                rows.append(row)
    return rows


def crossed_thresholds(*, limit: int, before: int, after: int) -> list[int]:
    """The quota thresholds (percent) a move from `before` to `after` crossed."""
    if limit <= 0 or after <= before:
        return []
    return [p for p in (WARN_PERCENT, EXCEEDED_PERCENT) if before < limit * p // 100 <= after]
