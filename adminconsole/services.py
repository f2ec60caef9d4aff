"""Console writes: quota requests, tenant overrides, plan rules and the plan matrix.

Every write goes through the owning app's service where one exists (policy rules through
`metering.services.policy_rule_set`, plan changes through `tenants.services.ati_token_retier`) and is
recorded in the audit log (`tenants.audit`).
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.utils import timezone

from adminconsole.models import QuotaRequest
from catalog.models import Feature, ModelClass, Plan, PlanFeature, PlanLLMAccess, Task
from catalog.selectors import catalog_cache_invalidate
from gateway_project.errors import BadRequest, Conflict, NotFound
from metering.alerts.models import Notification
from metering.models import PolicyRule
from metering.policy import policy_cache_invalidate
from metering.policy_keys import PolicyValueError, get_key, validate_value
from metering.services import policy_rule_delete as metering_policy_rule_delete
from metering.services import policy_rule_set
from tenants.audit import AuditSource, audit_record
from tenants.models import Tenant, User


def parse_value(raw: Any) -> Any:
    """Form text -> a value for the key registry ("4096" -> 4096; "12.50" and "BASE_S, BASE_M" stay text)."""
    if not isinstance(raw, str):
        return raw
    raw = raw.strip()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    return raw if isinstance(parsed, float) else parsed  # USD amounts never round through a float


def _task(task_code: str | None) -> Task | None:
    if not task_code:
        return None
    task = Task.objects.filter(code=task_code).first()
    if task is None:
        known = ", ".join(Task.objects.values_list("code", flat=True))
        raise BadRequest(f"Unknown task '{task_code}'. Known tasks: {known} (or none for all tasks).",
                         code="task_unknown")
    return task


def _validated(key: str, value: Any) -> Any:
    try:
        get_key(key)
        return validate_value(key, parse_value(value))
    except PolicyValueError as exc:
        raise BadRequest(str(exc), code="invalid_policy") from None


# ------------------------------------------------------------------------------------------ overrides


def tenant_override_set(*, tenant: Tenant, key: str, value: Any, task_code: str | None = None, note: str = "",
                        actor: User | None = None, source: str = AuditSource.CONSOLE) -> PolicyRule:
    """Create or update a TENANT-scope rule (validated by the key registry)."""
    return policy_rule_set(scope=PolicyRule.Scope.TENANT, tenant=tenant, task=_task(task_code), key=key,
                           value=parse_value(value), note=note, actor=actor, source=source)


def plan_rule_set(*, plan: Plan, key: str, value: Any, task_code: str | None = None, note: str = "",
                  actor: User | None = None, source: str = AuditSource.CONSOLE) -> PolicyRule:
    """Create or update one of a plan's default (PLAN-scope) rules."""
    return policy_rule_set(scope=PolicyRule.Scope.PLAN, plan=plan, task=_task(task_code), key=key,
                           value=parse_value(value), note=note, actor=actor, source=source)


def _subject_rule(*, rule_id: int, scope: str, subject_id: int, lock: bool = False) -> PolicyRule:
    subject_field = {PolicyRule.Scope.TENANT: "tenant_id", PolicyRule.Scope.PLAN: "plan_id"}[scope]
    rows = PolicyRule.objects.select_related("plan", "tenant", "user", "task")
    rule = (rows.select_for_update(of=("self",)) if lock else rows).filter(pk=rule_id, scope=scope,
                                                               **{subject_field: subject_id}).first()
    if rule is None:
        raise NotFound("No such rule.", code="rule_unknown")
    return rule


@transaction.atomic
def policy_rule_value_set(*, rule_id: int, scope: str, subject_id: int, value: Any, actor: User | None = None,
                          source: str = AuditSource.CONSOLE) -> PolicyRule:
    """Edit one rule's value in place, keeping its task, time window and usage condition."""
    rule = _subject_rule(rule_id=rule_id, scope=scope, subject_id=subject_id, lock=True)
    return policy_rule_set(
        scope=rule.scope, key=rule.key, value=parse_value(value), plan=rule.plan, tenant=rule.tenant, task=rule.task,
        weekdays=rule.weekdays, start_time=rule.start_time, end_time=rule.end_time, timezone_name=rule.timezone,
        when_quota_key=rule.when_quota_key, when_usage_percent_gte=rule.when_usage_percent_gte, note=rule.note,
        actor=actor, source=source,
    )


@transaction.atomic
def policy_rule_delete(*, rule_id: int, scope: str, subject_id: int, actor: User | None = None,
                       source: str = AuditSource.CONSOLE) -> None:
    """Delete a TENANT or PLAN rule of the given subject (a rule of another subject is a 404), through
    the policy-rule service (audited, policy cache dropped on commit)."""
    subject_field = {PolicyRule.Scope.TENANT: "tenant_id", PolicyRule.Scope.PLAN: "plan_id"}[scope]
    metering_policy_rule_delete(rule_id=rule_id, where={"scope": scope, subject_field: subject_id}, actor=actor,
                                source=source)


# --------------------------------------------------------------------------------------- plan matrix


@transaction.atomic
def plan_matrix_update(*, plan: Plan, feature_ids: set[int], access: dict[int, set[int]],
                       actor: User | None = None, source: str = AuditSource.CONSOLE) -> None:
    """Set the plan's features and, per task, its model classes (an empty set = the task is not in the plan).

    A task may only be granted when its feature is in the plan."""
    features = {f.pk: f for f in Feature.objects.all()}
    tasks = {t.pk: t for t in Task.objects.select_related("feature")}
    classes = {c.pk: c for c in ModelClass.objects.all()}
    unknown = (feature_ids - features.keys()) | (access.keys() - tasks.keys())
    unknown |= {c for ids in access.values() for c in ids} - classes.keys()
    if unknown:
        raise BadRequest("The form names features, tasks or model classes that do not exist.", code="invalid_matrix")
    errors = [
        f"{tasks[task_id].code} needs feature {tasks[task_id].feature.code} in the plan."
        for task_id, class_ids in sorted(access.items())
        if class_ids and tasks[task_id].feature_id not in feature_ids
    ]
    if errors:
        raise BadRequest(" ".join(errors), code="invalid_matrix")

    def snapshot() -> dict[str, Any]:
        grants = {
            a.task.code: sorted(mc.code for mc in a.model_classes.all())
            for a in PlanLLMAccess.objects.filter(plan=plan).select_related("task").prefetch_related("model_classes")
        }
        return {"features": sorted(PlanFeature.objects.filter(plan=plan).values_list("feature__code", flat=True)),
                "access": {code: grants[code] for code in sorted(grants) if grants[code]}}

    before = snapshot()
    PlanFeature.objects.filter(plan=plan).exclude(feature_id__in=feature_ids).delete()
    existing = set(PlanFeature.objects.filter(plan=plan).values_list("feature_id", flat=True))
    PlanFeature.objects.bulk_create([PlanFeature(plan=plan, feature_id=f) for f in feature_ids - existing])
    for task_id in tasks:
        class_ids = access.get(task_id, set())
        row = PlanLLMAccess.objects.filter(plan=plan, task_id=task_id).first()
        if not class_ids:
            if row is not None:
                row.delete()
            continue
        if row is None:
            row = PlanLLMAccess.objects.create(plan=plan, task_id=task_id)
        row.model_classes.set(class_ids)
    after = snapshot()
    if before != after:
        audit_record(action="plan.matrix_update", object_type="plan", object_id=plan.code, before=before,
                     after=after, actor=actor, source=source)
    transaction.on_commit(catalog_cache_invalidate)
    transaction.on_commit(policy_cache_invalidate)


# ------------------------------------------------------------------------------------ quota requests


@transaction.atomic
def quota_request_create(*, user: User, key: str, wanted_value: Any, task_code: str | None = None,
                         reason: str = "") -> QuotaRequest:
    """A tenant admin asks for a limit; validated against the key registry like any rule."""
    if user.tenant_id is None or user.role != User.Role.ADMIN:
        raise BadRequest("Only tenant admins may request quota.", code="not_tenant_admin")
    canonical = _validated(key, wanted_value)
    task = _task(task_code)
    if QuotaRequest.objects.filter(tenant_id=user.tenant_id, key=key, task=task,
                                   status=QuotaRequest.Status.PENDING).exists():
        raise Conflict("A request for this key and task is already pending.", code="quota_request_pending")
    request = QuotaRequest.objects.create(tenant_id=user.tenant_id, requested_by=user, key=key, task=task,
                                          wanted_value=canonical, reason=reason.strip())
    audit_record(action="quota_request.create", object_type="quota_request", object_id=request.pk,
                 tenant=user.tenant_id, after={"key": key, "task": task_code or None, "wanted_value": canonical,
                                               "reason": request.reason},
                 actor=user, source=AuditSource.API)
    return request


@transaction.atomic
def quota_request_decide(*, request_id: int, approve: bool, actor: User, note: str = "",
                         source: str = AuditSource.CONSOLE) -> QuotaRequest:
    """Approve (writes the TENANT rule) or deny a pending request; the tenant's admins are notified either way."""
    request = (QuotaRequest.objects.select_for_update(of=("self",)).select_related("tenant", "task")
               .filter(pk=request_id).first())
    if request is None:
        raise NotFound("No such quota request.", code="quota_request_unknown")
    if request.status != QuotaRequest.Status.PENDING:
        raise Conflict(f"This request was already {request.status.lower()}.", code="quota_request_decided")
    if approve:
        request.rule = policy_rule_set(
            scope=PolicyRule.Scope.TENANT, tenant=request.tenant, task=request.task, key=request.key,
            value=request.wanted_value, note=f"quota request #{request.pk}", actor=actor, source=source,
        )
    request.status = QuotaRequest.Status.APPROVED if approve else QuotaRequest.Status.DENIED
    request.decided_by, request.decided_at, request.note = actor, timezone.now(), note.strip()
    request.save(update_fields=["status", "decided_by", "decided_at", "note", "rule"])
    audit_record(action=f"quota_request.{'approve' if approve else 'deny'}", object_type="quota_request",
                 object_id=request.pk, tenant=request.tenant_id, before={"status": QuotaRequest.Status.PENDING},
                 after={"status": request.status, "note": request.note,
                        "rule": request.rule_id if approve else None},
                 actor=actor, source=source)
    scope = request.task.code if request.task_id else "all tasks"
    verdict = "approved" if approve else "denied"
    title = f"Quota request #{request.pk} {verdict}: {request.key} = {request.wanted_value} ({scope})"
    body = (f"Your request for {request.key} = {request.wanted_value} ({scope}) was {verdict}."
            + (" The new limit applies from your next call." if approve else "")
            + (f" Note: {request.note}" if request.note else ""))
    admins = User.objects.filter(tenant_id=request.tenant_id, role=User.Role.ADMIN, is_active=True)
    Notification.objects.bulk_create([
        Notification(tenant_id=request.tenant_id, user=admin, kind=f"QUOTA_REQUEST_{verdict.upper()}",
                     title=title[:200], body=body)
        for admin in admins
    ])
    return request
