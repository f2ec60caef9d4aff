"""Authoring policy rules: the one way a rule is created, changed, switched off or deleted.

Every writer -- the Django Admin (change form, inlines, actions), the console, `set_policy`, quota
request approval -- calls these functions, and each of them
- validates the row with `PolicyRule.full_clean()` (the row's rules live in `PolicyRule.clean()`),
- records the change in the audit log (`actor` / `source`: see tenants.audit), and
- drops the cached policy in every process once the transaction commits.
A row saved any other way (a shell's `rule.save()`) skips all three: use these functions there too.

Invalid input is a `PolicyRuleInvalid` (a 400 `invalid_policy`); its `errors` map field -> messages
so a form can show each one at its field.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from gateway_project.errors import BadRequest, NotFound
from metering.models import PolicyRule
from metering.policy import policy_cache_invalidate
from tenants.audit import audit_record, changed_fields

# The fields a caller may set on a rule (everything but the bookkeeping columns).
EDITABLE_FIELDS = (
    "scope", "plan", "tenant", "user", "task", "key", "value", "weekdays", "start_time", "end_time", "timezone",
    "when_quota_key", "when_usage_percent_gte", "is_active", "note",
)


class PolicyRuleInvalid(BadRequest):
    code = "invalid_policy"

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        text = " ".join(f"{field}: {message}" if field != "__all__" else message
                        for field, messages in errors.items() for message in messages)
        super().__init__(text, code="invalid_policy")


def _validated(rule: PolicyRule) -> None:
    try:
        rule.full_clean(validate_unique=False)
    except ValidationError as exc:
        raise PolicyRuleInvalid(exc.message_dict) from None


def _audit_tenant(rule: PolicyRule) -> int | None:
    if rule.tenant_id:
        return rule.tenant_id
    return rule.user.tenant_id if rule.user_id else None


def _locked(rule_id: Any, where: dict[str, Any] | None) -> PolicyRule:
    rule = (PolicyRule.objects.select_for_update(of=("self",)).select_related("plan", "tenant", "user", "task")
            .filter(pk=rule_id, **(where or {})).first())
    if rule is None:
        raise NotFound("No such rule.", code="rule_unknown")
    return rule


@transaction.atomic
def policy_rule_save(*, rule: PolicyRule, actor: Any = None, source: str | None = None) -> PolicyRule:
    """Validate and save a new or changed rule instance (the admin's forms hand theirs over as is).
    An operator's edit clears `seeded`, so a re-seed never overwrites it."""
    before = None
    if rule.pk is not None:
        stored = PolicyRule.objects.select_for_update(of=("self",)).select_related(
            "plan", "tenant", "user", "task").filter(pk=rule.pk).first()
        before = policy_rule_snapshot(stored) if stored is not None else None
    _validated(rule)
    after = policy_rule_snapshot(rule)
    if before is not None:
        before, after = changed_fields(before, after)
        if not before and not after and not rule.seeded:
            return rule  # nothing changed: no write, no audit row
    rule.seeded = False
    rule.save()
    action = "policy_rule.create" if before is None else (
        "policy_rule.deactivate" if after == {"is_active": False} else
        "policy_rule.activate" if after == {"is_active": True} else "policy_rule.update")
    audit_record(action=action, object_type="policy_rule", object_id=rule.pk, tenant=_audit_tenant(rule),
                 before=before, after=after, actor=actor, source=source)
    transaction.on_commit(policy_cache_invalidate)
    return rule


def policy_rule_create(
    *, scope: str, key: str, value: Any, plan: Any = None, tenant: Any = None, user: Any = None, task: Any = None,
    weekdays: list[int] | None = None, start_time: Any = None, end_time: Any = None, timezone_name: str = "UTC",
    when_quota_key: str = "", when_usage_percent_gte: int | None = None, is_active: bool = True, note: str = "",
    actor: Any = None, source: str | None = None,
) -> PolicyRule:
    """A new rule (another rule for the same subject and key may exist: e.g. a second time window)."""
    rule = PolicyRule(scope=scope, plan=plan, tenant=tenant, user=user, task=task, key=key, value=value,
                      weekdays=weekdays, start_time=start_time, end_time=end_time, timezone=timezone_name,
                      when_quota_key=when_quota_key or "", when_usage_percent_gte=when_usage_percent_gte,
                      is_active=is_active, note=note)
    return policy_rule_save(rule=rule, actor=actor, source=source)


@transaction.atomic
def policy_rule_update(
    *, rule_id: int, changes: dict[str, Any], where: dict[str, Any] | None = None, actor: Any = None,
    source: str | None = None,
) -> PolicyRule:
    """Change some fields of a rule (names of EDITABLE_FIELDS; `timezone` is the zone's name).
    `where` narrows which rules may be changed (e.g. {"tenant": tenant}): any other rule is a 404."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise BadRequest(f"A rule has no field(s) {', '.join(sorted(unknown))}.", code="invalid_policy")
    rule = _locked(rule_id, where)
    for name, value in changes.items():
        setattr(rule, name, value)
    return policy_rule_save(rule=rule, actor=actor, source=source)


def policy_rule_deactivate(*, rule_id: int, where: dict[str, Any] | None = None, actor: Any = None,
                           source: str | None = None) -> PolicyRule:
    """Switch a rule off (kept, shown as inactive, no longer enforced)."""
    return policy_rule_update(rule_id=rule_id, changes={"is_active": False}, where=where, actor=actor, source=source)


def policy_rule_activate(*, rule_id: int, where: dict[str, Any] | None = None, actor: Any = None,
                         source: str | None = None) -> PolicyRule:
    return policy_rule_update(rule_id=rule_id, changes={"is_active": True}, where=where, actor=actor, source=source)


@transaction.atomic
def policy_rule_delete(*, rule_id: int, where: dict[str, Any] | None = None, actor: Any = None,
                       source: str | None = None) -> None:
    """Delete a rule (`where` as for policy_rule_update)."""
    rule = _locked(rule_id, where)
    before, tenant_id = policy_rule_snapshot(rule), _audit_tenant(rule)
    rule.delete()
    audit_record(action="policy_rule.delete", object_type="policy_rule", object_id=rule_id, tenant=tenant_id,
                 before=before, actor=actor, source=source)
    transaction.on_commit(policy_cache_invalidate)


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
    """Create or update the one rule for (scope, subject, task, key, window, condition), and make it
    active. (A command's or the console's "set this limit": saving twice updates, never duplicates.)"""
    lookup = {"scope": scope, "plan": plan, "tenant": tenant, "user": user, "task": task, "key": key,
              "start_time": start_time, "end_time": end_time, "when_quota_key": when_quota_key or ""}
    rule = None
    if _subject_given(scope, plan, tenant, user):
        # Weekdays are JSON: compared here, so [0, 1] and [1, 0] are the same window on every backend.
        wanted = _days(weekdays)
        for row in PolicyRule.objects.select_for_update(of=("self",)).filter(**lookup).order_by("pk"):
            if _days(row.weekdays) == wanted:
                rule = row
                break
    if rule is None:
        rule = PolicyRule(**lookup, weekdays=weekdays)
    rule.value = value
    rule.weekdays = weekdays
    rule.timezone = timezone_name
    rule.when_usage_percent_gte = when_usage_percent_gte
    rule.note = note or rule.note
    rule.is_active = True
    return policy_rule_save(rule=rule, actor=actor, source=source)


def _days(weekdays: Any) -> Any:
    if isinstance(weekdays, list) and weekdays and all(type(d) is int for d in weekdays):
        return sorted(set(weekdays))
    return weekdays or None


def _subject_given(scope: str, plan: Any, tenant: Any, user: Any) -> bool:
    # An unsaved or missing subject matches no stored rule (and the row's clean() says what is missing).
    subject = {"PLAN": plan, "TENANT": tenant, "USER": user}.get(scope)
    return scope == "GLOBAL" or getattr(subject, "pk", None) is not None


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
