"""Policy evaluation: from a caller, a task and a request to an explainable `EnforcementDecision`.

Checks, in order: feature in plan, task in plan, requested model class allowed, per-request
limits (input counted by the caller, max_tokens_out clamped), then computes the holds that
admission takes atomically for quotas, concurrency and rates. Reading rules is cached per
subject and invalidated on every rule write (`policy_cache_invalidate`).
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Q

from catalog.selectors import (
    ModelInfo,
    TaskInfo,
    model_class_codes,
    plan_entitlements,
    provider_models_active,
    task_get,
)
from gateway_project.memo import GenerationCache
from metering.models import Metric, PolicyRule, UsageMeter, Window
from metering.periods import period_start
from metering.policy_keys import (
    API_KEY_LIMIT_KEYS,
    METERED_KEYS,
    POLICY_KEYS,
    KeyKind,
    PolicyKey,
    Subject,
    enforced_amount,
)
from tenants.selectors import TenantContext

logger = logging.getLogger("gateway.policy")

SCOPE_RANK = {
    PolicyRule.Scope.GLOBAL: 0,
    PolicyRule.Scope.PLAN: 1,
    PolicyRule.Scope.TENANT: 2,
    PolicyRule.Scope.USER: 3,
}
policy_cache = GenerationCache("policy")
_WINDOWS = tuple(Window.values)  # Django's enum `values` builds a new list on every access


def policy_cache_invalidate() -> None:
    policy_cache.invalidate()


@dataclass(frozen=True)
class RuleView:
    id: int
    scope: str
    task_id: int | None
    key: str
    value: Any
    weekdays: tuple[int, ...] | None
    start_time: Any
    end_time: Any
    timezone: str
    when_quota_key: str
    when_usage_percent_gte: int | None
    subject_label: str

    @property
    def is_narrowed(self) -> bool:
        """Windowed or conditional rules are more specific than a plain rule of the same scope."""
        return bool(self.weekdays or self.start_time or self.end_time or self.when_quota_key)

    def source(self) -> str:
        where = f"{self.scope.lower()} {self.subject_label}".strip()
        extra = []
        if self.weekdays or self.start_time or self.end_time:
            extra.append("time window")
        if self.when_quota_key:
            extra.append(f"when {self.when_quota_key} >= {self.when_usage_percent_gte}%")
        return f"rule #{self.id} ({where}{', ' + ', '.join(extra) if extra else ''})"

    def applies_at(self, now: datetime) -> bool:
        if not self.weekdays and not self.start_time and not self.end_time:
            return True
        try:
            local = now.astimezone(zoneinfo.ZoneInfo(self.timezone or "UTC"))
        except zoneinfo.ZoneInfoNotFoundError:
            local = now
        current = local.time().replace(tzinfo=None)
        weekday = local.weekday()
        if self.start_time and self.end_time and self.start_time > self.end_time:
            # A window over midnight belongs to the day it starts on: Friday 22:00-06:00 covers
            # early Saturday, not early Friday.
            if current < self.end_time:
                weekday = (weekday - 1) % 7
            elif current < self.start_time:
                return False
            return not self.weekdays or weekday in self.weekdays
        if self.weekdays and weekday not in self.weekdays:
            return False
        if self.start_time and self.end_time:
            return self.start_time <= current < self.end_time
        if self.start_time:
            return current >= self.start_time
        if self.end_time:
            return current < self.end_time
        return True


def _load_rules(context: TenantContext) -> list[RuleView]:
    def build() -> list[RuleView]:
        rows = PolicyRule.objects.filter(is_active=True).filter(
            Q(scope=PolicyRule.Scope.GLOBAL)
            | Q(scope=PolicyRule.Scope.PLAN, plan_id=context.plan_id)
            | Q(scope=PolicyRule.Scope.TENANT, tenant_id=context.tenant_id)
            | Q(scope=PolicyRule.Scope.USER, user_id=context.user_id)
        )
        labels = {
            PolicyRule.Scope.GLOBAL: "",
            PolicyRule.Scope.PLAN: context.plan_code,
            PolicyRule.Scope.TENANT: context.tenant_slug,
            PolicyRule.Scope.USER: context.user.username,
        }
        return [
            RuleView(
                id=r.pk, scope=r.scope, task_id=r.task_id, key=r.key, value=r.value,
                weekdays=tuple(r.weekdays) if r.weekdays else None, start_time=r.start_time, end_time=r.end_time,
                timezone=r.timezone, when_quota_key=r.when_quota_key, when_usage_percent_gte=r.when_usage_percent_gte,
                subject_label=labels[r.scope],
            )
            for r in rows
            if r.key in POLICY_KEYS  # rules are validated on save; an unknown key never applies
        ]

    return policy_cache.get(f"rules:{context.plan_id}:{context.tenant_id}:{context.user_id}", build)


@dataclass(frozen=True)
class Limit:
    key: str
    value: Any
    source: str
    task_code: str | None  # None = all tasks together (quota keys) / every task (per-request keys)
    rule_id: int = 0  # the PolicyRule it came from (the rollout report names it)


@dataclass(frozen=True)
class HoldSpec:
    # The API key whose own budget this hold counts (policy keys of subject KEY); None for every other.
    # Keyword-only: positional construction of the other fields stays as it is.
    api_key_id: int | None = field(default=None, kw_only=True)
    key: str
    metric: str
    window: str
    period_start: datetime
    user_id: int | None
    task_id: int | None
    limit: int
    amount: int
    source: str
    rule_id: int = 0  # the PolicyRule the limit came from


@dataclass
class EnforcementDecision:
    allowed: bool
    task: TaskInfo | None = None
    code: str = ""
    message: str = ""
    status: int = 200
    retry_after: int | None = None
    limits: dict[str, Limit] = field(default_factory=dict)
    model_classes: list[str] = field(default_factory=list)
    candidates: list[ModelInfo] = field(default_factory=list)
    holds: list[HoldSpec] = field(default_factory=list)
    tokens_in: int = 0
    max_tokens_out: int = 0
    # Budget fitting shrank max_tokens_out to this to fit the remaining quota (None: it did not);
    # the ledger row keeps it (UsageLog.max_tokens_fitted).
    max_tokens_fitted: int | None = None
    api_calls: int = 1
    steps: int = 1
    warnings: list[str] = field(default_factory=list)
    would_refuse_code: str = ""  # SHADOW: the per-request refusal HARD would have returned
    # SHADOW: every per-request refusal HARD would have returned, as {"code", "key", "rule"}.
    would_refuse: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def refuse(code: str, message: str, status: int, task: TaskInfo | None = None,
               retry_after: int | None = None) -> EnforcementDecision:
        return EnforcementDecision(allowed=False, task=task, code=code, message=message, status=status,
                                   retry_after=retry_after)


class _Resolver:
    """Most specific applicable rule wins; ties go to the tighter value."""

    def __init__(self, rules: list[RuleView], context: TenantContext, task: TaskInfo, now: datetime,
                 usage_unavailable: bool = False) -> None:
        self.rules = [r for r in rules if r.applies_at(now)]
        self._by_key: dict[str, list[RuleView]] = {}
        for rule in self.rules:
            self._by_key.setdefault(rule.key, []).append(rule)
        self.context = context
        self.task = task
        self.now = now
        # Metering database down (SHADOW/SOFT failing open): usage conditions count as not met.
        self._usage: dict[tuple, int] | None = {} if usage_unavailable else None

    def _best(self, candidates: list[RuleView]) -> RuleView | None:
        candidates = [r for r in candidates if self._condition_met(r)]
        if not candidates:
            return None

        def rank(rule: RuleView) -> tuple:
            if isinstance(rule.value, list):
                tighter = -len(rule.value)  # fewer model classes
            elif isinstance(rule.value, int):
                tighter = -rule.value
            else:
                tighter = -enforced_amount(rule.key, rule.value)  # USD written as a string
            return (SCOPE_RANK[rule.scope], rule.task_id is not None, rule.is_narrowed, tighter)

        return max(candidates, key=rank)

    def per_request(self, key: str) -> Limit | None:
        rule = self._best([r for r in self._by_key.get(key, ()) if r.task_id in (None, self.task.id)])
        if rule is None:
            return None
        return Limit(key, rule.value, rule.source(), self.task.code if rule.task_id else None, rule.id)

    def metered(self, key: str, *, task_specific: bool, with_conditions: bool = True) -> Limit | None:
        task_id = self.task.id if task_specific else None
        candidates = [r for r in self._by_key.get(key, ()) if r.task_id == task_id]
        if not with_conditions:
            candidates = [r for r in candidates if not r.when_quota_key]
        rule = self._best(candidates) if with_conditions else (
            max(candidates, key=lambda r: (SCOPE_RANK[r.scope], r.is_narrowed)) if candidates else None
        )
        if rule is None:
            return None
        value = enforced_amount(key, rule.value)
        return Limit(key, value, rule.source(), self.task.code if task_specific else None, rule.id)

    def _condition_met(self, rule: RuleView) -> bool:
        if not rule.when_quota_key:
            return True
        quota = POLICY_KEYS.get(rule.when_quota_key)
        if quota is None or not quota.is_metered:
            return False
        percent = 0
        for task_specific in (False, True):
            limit = self.metered(quota.name, task_specific=task_specific, with_conditions=False)
            if limit is None or limit.value <= 0:
                continue
            used = self._meter_used(quota, task_specific=task_specific)
            percent = max(percent, used * 100 // limit.value)
        return percent >= (rule.when_usage_percent_gte or 0)

    def _meter_used(self, key: PolicyKey, *, task_specific: bool) -> int:
        if self._usage is None:
            self._usage = usage_snapshot(tenant_id=self.context.tenant_id, user_id=self.context.user_id,
                                         now=self.now)
        user_id = self.context.user_id if key.subject == Subject.USER else None
        task_id = self.task.id if task_specific else None
        return self._usage.get((user_id, task_id, key.metric, key.window, period_start(key.window, self.now)), 0)


@dataclass(frozen=True)
class _Resolved:
    """Every limit that applies to one caller and task: per-request keys by name, metered keys by
    (name, task-specific)."""
    per_request: dict[str, Limit]
    metered: dict[tuple[str, bool], Limit]


# Resolving ~30 keys over the rules is most of policy evaluation's time, and its result changes
# only when the rules do (a new list from the rule cache), when a time window opens or closes
# (the set of rules that apply), or when a usage condition flips: all three are in the key.
_resolved_memo: dict[tuple, tuple[list[RuleView], _Resolved]] = {}


def _resolve(rules: list[RuleView], context: TenantContext, task: TaskInfo, now: datetime,
             usage_unavailable: bool = False) -> _Resolved:
    resolver = _Resolver(rules, context, task, now, usage_unavailable)
    conditions = tuple(resolver._condition_met(r) for r in resolver.rules if r.when_quota_key)
    memo_key = (id(rules), task.id, tuple(r.id for r in resolver.rules), conditions)
    hit = _resolved_memo.get(memo_key)
    if hit is not None and hit[0] is rules:  # `is`: an id can be reused once its list is gone
        return hit[1]
    resolved = _Resolved(
        per_request={name: limit for name, key in POLICY_KEYS.items() if not key.is_metered
                     and (limit := resolver.per_request(name)) is not None},
        metered={(key.name, task_specific): limit for key in METERED_KEYS for task_specific in (False, True)
                 if (limit := resolver.metered(key.name, task_specific=task_specific)) is not None},
    )
    if len(_resolved_memo) >= 10_000:
        _resolved_memo.clear()
    _resolved_memo[memo_key] = (rules, resolved)
    return resolved


# Usage conditions read the caller's meters. A per-process snapshot, at most
# POLICY_USAGE_CACHE_SECONDS old, spares the hot path that query: a condition only throttles
# (smaller max_tokens_out, cheaper classes), while the quotas themselves are enforced exactly by
# admission's conditional holds.
_usage_snapshots: dict[tuple[int, int], tuple[float, datetime, dict[tuple, int]]] = {}


def usage_snapshot(*, tenant_id: int, user_id: int, now: datetime) -> dict[tuple, int]:
    """used + reserved of the caller's tenant-wide and own meters of the current periods, by subject."""
    ttl = settings.POLICY_USAGE_CACHE_SECONDS
    minute = period_start(Window.MINUTE, now)
    cached = _usage_snapshots.get((tenant_id, user_id))
    clock = time.monotonic()
    if cached is not None and clock - cached[0] < ttl and cached[1] == minute:
        return cached[2]
    usage: dict[tuple, int] = {}
    rows = UsageMeter.objects.filter(tenant_id=tenant_id, api_key__isnull=True).filter(  # not the keys' own
        Q(user__isnull=True) | Q(user_id=user_id)
    ).filter(period_start__in={period_start(w, now) for w in Window.values}).values_list(
        "user_id", "task_id", "metric", "window", "period_start", "used", "reserved"
    )
    for row_user, task_id, metric, window, start, used, reserved in rows:
        usage[(row_user, task_id, metric, window, start)] = used + reserved
    if ttl > 0:
        if len(_usage_snapshots) > 10_000:
            _usage_snapshots.clear()
        _usage_snapshots[(tenant_id, user_id)] = (clock, minute, usage)
    return usage


def usage_snapshot_clear() -> None:
    _usage_snapshots.clear()


def _select_models(requested: str, allowed: list[str]) -> tuple[list[str], ModelInfo | None, str | None]:
    """Return (classes to try, pinned provider model, error code) for a `model` field."""
    if requested in ("", "auto"):
        return allowed, None, None
    models = provider_models_active()
    if requested in model_class_codes():
        return ([requested], None, None) if requested in allowed else ([], None, "model_class_not_allowed")
    pinned = next((m for m in models if m.model_name == requested), None)
    if pinned is None:
        return [], None, "model_not_found"
    if pinned.model_class not in allowed:
        return [], None, "model_class_not_allowed"
    return [pinned.model_class], pinned, None


def policy_evaluate(
    *,
    context: TenantContext,
    task_code: str,
    requested_model: str = "auto",
    tokens_in: int,
    requested_max_tokens_out: int | None = None,
    api_calls: int | str | None = None,
    steps: int | str = 1,
    restrict_classes: tuple[str, ...] | None = None,
    now: datetime,
    mode: str = "HARD",
    usage_unavailable: bool = False,
    api_call_fee_micro_usd: int = 0,
) -> EnforcementDecision:
    task = task_get(task_code)
    if task is None:
        return EnforcementDecision.refuse("task_not_found", f"Unknown task '{task_code}'.", 404)
    entitlements = plan_entitlements(context.plan_id)
    if task.feature_id not in entitlements.feature_ids:
        return EnforcementDecision.refuse(
            "feature_not_in_plan", f"The {context.plan_code} plan does not include {task.feature_code}.", 403, task
        )
    plan_classes = list(entitlements.model_classes.get(task.code, ()))
    if not plan_classes:
        return EnforcementDecision.refuse(
            "task_not_in_plan", f"The {context.plan_code} plan does not include task {task.code}.", 403, task
        )
    api_key = context.api_key
    if api_key is not None and api_key.allowed_tasks and task.code not in api_key.allowed_tasks:
        return EnforcementDecision.refuse(
            "task_not_allowed_for_key",
            f"The API key '{api_key.name}' may not call {task.code}; it is limited to "
            f"{', '.join(api_key.allowed_tasks)}.", 403, task)
    if api_key is not None and api_key.allowed_model_classes:  # the key narrows what the plan allows
        plan_classes = [c for c in plan_classes if c in api_key.allowed_model_classes]
    resolved = _resolve(_load_rules(context), context, task, now, usage_unavailable)
    narrowed = resolved.per_request.get("allowed_model_classes")
    allowed = [c for c in plan_classes if (narrowed is None or c in narrowed.value)
               and (restrict_classes is None or c in restrict_classes)]
    classes, pinned, error = _select_models(requested_model, allowed)
    if error == "model_not_found":
        return EnforcementDecision.refuse("model_not_found", f"Unknown model '{requested_model}'.", 404, task)
    if error or not classes:
        return EnforcementDecision.refuse(
            "model_class_not_allowed",
            f"Model '{requested_model}' is not allowed for {task.code} on your plan; allowed: {', '.join(allowed)}.",
            403, task,
        )
    candidates = [pinned] if pinned else sorted(
        (m for m in provider_models_active() if m.model_class in classes),
        key=lambda m: (classes.index(m.model_class), m.priority),
    )

    unpriced = [m for m in candidates if not m.is_priced]
    if unpriced:
        # A call on a model without a price would be silently free: never route to one.
        logger.error("unpriced provider models excluded from routing: %s",
                     ", ".join(f"{m.provider}:{m.model_name}" for m in unpriced))
        candidates = [m for m in candidates if m.is_priced]
        if not candidates:
            return EnforcementDecision.refuse(
                "model_unpriced", "No priced model serves this request; an operator must set its prices.", 503, task
            )
    decision = EnforcementDecision(allowed=True, task=task, model_classes=classes, candidates=candidates,
                                   tokens_in=tokens_in)
    for name, key in POLICY_KEYS.items():
        if key.kind == KeyKind.PER_REQUEST:
            limit = resolved.per_request.get(name)
            if limit is not None:
                decision.limits[name] = limit
    if narrowed is not None:
        decision.limits["allowed_model_classes"] = narrowed

    max_in = decision.limits.get("max_tokens_in")
    if max_in is not None and tokens_in > max_in.value:
        message = f"The input has {tokens_in} tokens; your limit is {max_in.value} ({max_in.source})."
        if mode != "SHADOW":  # a per-request safety limit: SOFT blocks it too
            return EnforcementDecision.refuse("input_too_large", message, 413, task)
        decision.would_refuse_code = "input_too_large"
        decision.would_refuse.append({"code": "input_too_large", "key": "max_tokens_in", "rule": max_in.rule_id})
        decision.warnings.append(message)
    model_cap = min((m.max_output_tokens for m in candidates), default=None)
    max_out_limit = decision.limits.get("max_tokens_out")
    caps = [v for v in (max_out_limit.value if max_out_limit else None, model_cap) if v is not None]
    wanted = requested_max_tokens_out if requested_max_tokens_out is not None else (min(caps) if caps else 1024)
    decision.max_tokens_out = min([wanted, *caps])
    if decision.max_tokens_out != wanted:
        decision.warnings.append(f"max_tokens clamped from {wanted} to {decision.max_tokens_out}")
    # Multi-step tasks hold for their worst case: steps and API calls may name the policy key
    # that bounds them (e.g. steps="agent_max_steps", api_calls="max_api_calls").
    if isinstance(steps, str):
        decision.steps = int(decision.limits[steps].value) if steps in decision.limits else 1
    else:
        decision.steps = steps
    decision.steps = max(1, decision.steps)
    max_calls = decision.limits.get("max_api_calls")
    if isinstance(api_calls, str):
        api_calls = int(decision.limits[api_calls].value) if api_calls in decision.limits else decision.steps
    decision.api_calls = api_calls if api_calls is not None else 1
    if max_calls is not None:
        decision.api_calls = min(decision.api_calls, max_calls.value)

    starts = {window: period_start(window, now) for window in _WINDOWS}
    holds = [
        HoldSpec(
            key=key.name, metric=key.metric, window=key.window, period_start=starts[key.window],
            user_id=context.user_id if key.subject == Subject.USER else None,
            task_id=task.id if task_specific else None, limit=int(limit.value), amount=0, source=limit.source,
            rule_id=limit.rule_id,
        )
        for key in METERED_KEYS for task_specific in (False, True)
        if (limit := resolved.metered.get((key.name, task_specific))) is not None
    ]
    held_out = decision.max_tokens_out
    if policy_setting(decision, "fit_max_tokens_to_budget") and not usage_unavailable:
        held_out = _budget_fit(decision, holds, context=context, now=now, mode=mode)

    worst_cost = max((m.worst_cost_micro_usd(tokens_in=tokens_in, tokens_out=held_out) for m in candidates),
                     default=0)
    amounts = {
        Metric.TOKENS: decision.steps * (tokens_in + held_out),
        # Every API call may be a priced outbound request (search fees) on top of the tokens.
        Metric.COST: decision.steps * worst_cost + decision.api_calls * max(0, api_call_fee_micro_usd),
        Metric.API_CALLS: decision.api_calls,
        Metric.REQUESTS: 1,
        Metric.CONCURRENT: 1,
    }
    # Positional, not dataclasses.replace: this runs for every hold of every call (replace cost ~8 us each).
    decision.holds = [HoldSpec(h.key, h.metric, h.window, h.period_start, h.user_id, h.task_id, h.limit,
                               amounts[h.metric], h.source, h.rule_id) for h in holds]
    for hold in holds:
        decision.limits[f"{hold.key}{':' + task.code if hold.task_id else ''}"] = resolved.metered[
            (hold.key, hold.task_id is not None)]
    if api_key is not None and api_key.limits:
        _api_key_holds(decision, api_key, starts=starts, amounts=amounts)
    return decision


def _api_key_holds(decision: EnforcementDecision, api_key: Any, *, starts: dict[str, datetime],
                   amounts: dict[str, int]) -> None:
    """The key's own budget (ApiKey.limits): one hold per limit on the key's own meters, on top of
    every tenant and user limit. Budget fitting does not shrink a call to these; admission refuses."""
    source = f"API key '{api_key.name}'"
    for name, value in api_key.limits:
        key = API_KEY_LIMIT_KEYS.get(name)
        if key is None:  # validated on save; a key dropped from the registry no longer applies
            continue
        limit = int(enforced_amount(name, value))
        decision.holds.append(HoldSpec(key=name, metric=key.metric, window=key.window,
                                       period_start=starts[key.window], user_id=None, task_id=None, limit=limit,
                                       amount=amounts[key.metric], source=source, api_key_id=api_key.id))
        decision.limits[name] = Limit(name, limit, source, None)


def policy_setting(decision: EnforcementDecision, name: str) -> Any:
    """A per-request key's effective value: the rule's, else the registry's default."""
    limit = decision.limits.get(name)
    return limit.value if limit is not None else POLICY_KEYS[name].default


def _out_within(model: ModelInfo, *, tokens_in: int, budget_micro_usd: int) -> int:
    """The most output tokens one step may have on this model within a budget (-1: not even the input)."""
    # cost_micro_usd rounds up: ceil(n / 10**6) <= budget exactly when n <= budget * 10**6.
    room = budget_micro_usd * 1_000_000 - tokens_in * model.worst_input_price  # as the hold prices it
    if room < 0:
        return -1
    return room // model.output_price if model.output_price else 2**62


def _budget_fit(decision: EnforcementDecision, holds: list[HoldSpec], *, context: TenantContext, now: datetime,
                mode: str) -> int:
    """Budget fitting (`fit_max_tokens_to_budget`): the max_tokens_out the holds are computed from.

    When the worst case would cross the tightest remaining token or cost quota (or token rate) but
    at least `fit_min_max_tokens` fits, the call gets what fits instead of a refusal. The usage read
    here may be POLICY_USAGE_CACHE_SECONDS old: admission stays the exact check and refuses a
    fitted call that a concurrent one outran. SHADOW and SOFT never change the call (its answer is
    not shortened; SOFT says what HARD would do), but hold what HARD would, so what they record as
    refused is what HARD refuses."""
    bounded = [h for h in holds if h.metric in (Metric.TOKENS, Metric.COST)]
    if not bounded:
        return decision.max_tokens_out
    usage = usage_snapshot(tenant_id=context.tenant_id, user_id=context.user_id, now=now)
    fits, tightest = decision.max_tokens_out, ""
    worst = {Metric.TOKENS: decision.steps * (decision.tokens_in + decision.max_tokens_out),
             Metric.COST: decision.steps * max((m.worst_cost_micro_usd(tokens_in=decision.tokens_in,
                                                                       tokens_out=decision.max_tokens_out)
                                                for m in decision.candidates), default=0)}
    for hold in bounded:
        left = hold.limit - usage.get((hold.user_id, hold.task_id, hold.metric, hold.window, hold.period_start), 0)
        if worst[hold.metric] <= left:
            continue  # the worst case fits: the common case, and nothing to compute
        per_step = left // decision.steps
        if hold.metric == Metric.TOKENS:
            room = per_step - decision.tokens_in
        else:  # the hold is the most expensive candidate's cost: every candidate must fit
            room = min((_out_within(m, tokens_in=decision.tokens_in, budget_micro_usd=per_step)
                        for m in decision.candidates), default=fits)
        if room < fits:
            fits, tightest = room, hold.key
    if not tightest or fits < max(1, int(policy_setting(decision, "fit_min_max_tokens"))):
        return decision.max_tokens_out  # it fits as asked, or not even the minimum does: admission refuses
    shrunk = f"max_tokens shrunk from {decision.max_tokens_out} to {fits} to fit the remaining quota ({tightest})"
    if mode == "HARD":
        decision.warnings.append(shrunk)
        decision.max_tokens_out = decision.max_tokens_fitted = fits
    elif mode == "SOFT":  # SOFT warns in headers; SHADOW records silently
        decision.warnings.append(f"in HARD mode, {shrunk}; SOFT leaves max_tokens as asked")
    return fits


def effective_limits(*, context: TenantContext, task_code: str, now: datetime) -> list[Limit]:
    """Every limit that applies to the caller for one task, with the rule it came from."""
    task = task_get(task_code)
    if task is None:
        return []
    resolved = _resolve(_load_rules(context), context, task, now)
    limits: list[Limit] = []
    for name, key in POLICY_KEYS.items():
        if key.is_metered:
            limits.extend(x for x in (resolved.metered.get((name, False)), resolved.metered.get((name, True)))
                          if x is not None)
        else:
            limit = resolved.per_request.get(name)
            if limit is not None:
                limits.append(limit)
    return limits
