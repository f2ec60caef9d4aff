"""Authoring policy rules: validated against the key registry, audited, caches invalidated on commit."""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.db import transaction

from gateway_project.errors import BadRequest
from metering.models import PolicyRule
from metering.policy import policy_cache_invalidate
from metering.policy_keys import POLICY_KEYS, KeyKind, PolicyValueError, validate_value
from tenants.audit import audit_record, changed_fields


@transaction.atomic
def policy_rule_set(
    *,
    scope: str,
    key: str,
    value: Any,
    plan: Any = None,
    tenant: Any = None,
    user: Any = None,
    task: Any = None,
    weekdays: list[int] | None = None,
    start_time: Any = None,
    end_time: Any = None,
    timezone_name: str = "UTC",
    when_quota_key: str = "",
    when_usage_percent_gte: int | None = None,
    note: str = "",
    actor: Any = None,
    source: str | None = None,
) -> PolicyRule:
    """Create or update the one rule for (scope, subject, task, key, window, condition), validated.
    The change is recorded in the audit log (`actor` / `source`: see tenants.audit)."""
    try:
        canonical = validate_value(key, value)
        if when_quota_key:
            quota = POLICY_KEYS.get(when_quota_key)
            if quota is None or quota.kind != KeyKind.QUOTA:
                raise PolicyValueError(f"'{when_quota_key}' is not a quota key; a condition must name one.")
            if when_usage_percent_gte is None or not (0 < when_usage_percent_gte <= 100):
                raise PolicyValueError("A usage condition needs a percentage between 1 and 100.")
        elif when_usage_percent_gte is not None:
            raise PolicyValueError("A usage percentage needs the quota key it is a percentage of.")
        if weekdays is not None and (not weekdays or any(d not in range(7) for d in weekdays)):
            raise PolicyValueError("weekdays are numbers 0 (Monday) to 6 (Sunday).")
        try:
            zoneinfo.ZoneInfo(timezone_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PolicyValueError(f"Unknown time zone '{timezone_name}'.") from None
    except PolicyValueError as error:
        raise BadRequest(str(error), code="invalid_policy") from None
    subjects = {PolicyRule.Scope.GLOBAL: {}, PolicyRule.Scope.PLAN: {"plan": plan},
                PolicyRule.Scope.TENANT: {"tenant": tenant}, PolicyRule.Scope.USER: {"user": user}}
    if scope not in subjects:
        raise BadRequest("scope must be GLOBAL, PLAN, TENANT or USER.", code="invalid_policy")
    subject = subjects[scope]
    if any(v is None for v in subject.values()):
        raise BadRequest(f"A {scope} rule needs its {', '.join(subject)}.", code="invalid_policy")
    lookup = {"scope": scope, "plan": None, "tenant": None, "user": None, **subject, "task": task, "key": key,
              "weekdays": weekdays, "start_time": start_time, "end_time": end_time,
              "when_quota_key": when_quota_key}
    if weekdays is None:
        lookup["weekdays__isnull"] = True
        del lookup["weekdays"]
    rule = PolicyRule.objects.filter(**lookup).first()
    before = policy_rule_snapshot(rule) if rule is not None else None
    if rule is None:
        lookup.pop("weekdays__isnull", None)
        rule = PolicyRule(**{**lookup, "weekdays": weekdays})
    rule.value = canonical
    rule.timezone = timezone_name
    rule.when_usage_percent_gte = when_usage_percent_gte
    rule.note = note or rule.note
    rule.is_active = True
    rule.seeded = False  # an operator's rule: a re-seed never touches it
    rule.save()
    after = policy_rule_snapshot(rule)
    if before is not None:
        before, after = changed_fields(before, after)
    audit_record(action="policy_rule.update" if before is not None else "policy_rule.create",
                 object_type="policy_rule", object_id=rule.pk,
                 tenant=rule.tenant_id or getattr(user, "tenant_id", None),
                 before=before, after=after, actor=actor, source=source)
    transaction.on_commit(policy_cache_invalidate)
    return rule


def policy_rule_snapshot(rule: PolicyRule) -> dict[str, Any]:
    """What an audit event shows of a rule."""
    return {
        "scope": rule.scope, "plan": rule.plan.code if rule.plan_id else None,
        "tenant": rule.tenant.slug if rule.tenant_id else None,
        "user": rule.user.username if rule.user_id else None, "task": rule.task.code if rule.task_id else None,
        "key": rule.key, "value": rule.value, "weekdays": rule.weekdays,
        "start_time": rule.start_time.isoformat() if rule.start_time else None,
        "end_time": rule.end_time.isoformat() if rule.end_time else None, "timezone": rule.timezone,
        "when_quota_key": rule.when_quota_key, "when_usage_percent_gte": rule.when_usage_percent_gte,
        "is_active": rule.is_active, "note": rule.note,
    }
