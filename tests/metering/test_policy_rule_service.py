"""The policy-rule service is the one way a rule changes: the row's rules (PolicyRule.clean) refuse bad
rows field by field, every change is audited, and the cached policy is dropped on commit."""

from __future__ import annotations

from datetime import time

import pytest
from django.utils import timezone

from catalog.models import Plan
from gateway_project.errors import BadRequest, NotFound
from metering import services
from metering.models import PolicyRule
from metering.policy import effective_limits
from tenants.audit import AuditEvent
from tenants.selectors import identity_resolve


def _max_out(user) -> int | None:
    tenant = user.tenant
    context = identity_resolve(user_id=user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)
    limits = effective_limits(context=context, task_code="LLM2_DRAFT", now=timezone.now())
    found = {(x.key, x.task_code): x.value for x in limits}
    return found.get(("max_tokens_out", None))


@pytest.mark.parametrize("fields, field, message", [
    ({"scope": "PLAN"}, "plan", "needs a plan"),
    ({"scope": "GLOBAL", "tenant": "T"}, "tenant", "names no tenant"),
    ({"scope": "TENANT", "tenant": "T", "user": "U"}, "user", "names no user"),
    ({"key": "max_tokens"}, "key", "Unknown policy key"),
    ({"value": "lots"}, "value", "whole number"),
    ({"weekdays": [0, 9]}, "weekdays", "0 (Monday) to 6"),
    ({"start_time": time(9), "end_time": time(9)}, "end_time", "window is empty"),
    ({"timezone_name": "Nowhere/Land"}, "timezone", "Unknown time zone"),
    ({"when_quota_key": "tenant_rpm", "when_usage_percent_gte": 50}, "when_quota_key", "not a quota key"),
    ({"when_quota_key": "tenant_tokens_per_day", "when_usage_percent_gte": 0}, "when_usage_percent_gte", "1 and 100"),
    ({"when_usage_percent_gte": 50}, "when_quota_key", "quota key"),
])
def test_a_bad_row_is_refused_at_its_field_and_nothing_is_written(tenant_admin, fields, field, message):
    fields = {**fields}
    for name, stand_in in (("tenant", tenant_admin.tenant), ("user", tenant_admin.user)):
        if fields.get(name) in ("T", "U"):
            fields[name] = stand_in
    kwargs = {"scope": "TENANT", "tenant": tenant_admin.tenant, "key": "max_tokens_out", "value": 100, **fields}
    if fields.get("scope") in ("PLAN", "GLOBAL") and "tenant" not in fields:
        kwargs.pop("tenant")
    rules, events = PolicyRule.objects.count(), AuditEvent.objects.count()
    with pytest.raises(services.PolicyRuleInvalid) as refused:
        services.policy_rule_create(**kwargs)
    assert refused.value.status_code == 400 and refused.value.code == "invalid_policy"
    assert any(message in text for text in refused.value.errors[field]), refused.value.errors
    assert (PolicyRule.objects.count(), AuditEvent.objects.count()) == (rules, events)


def test_clean_makes_values_canonical(catalog):
    rule = PolicyRule(scope="GLOBAL", key="tenant_cost_per_month_usd", value="12.50", weekdays=[4, 0, 4])
    rule.full_clean()
    assert (rule.value, rule.weekdays) == ("12.5", [0, 4])


def test_create_update_deactivate_delete_are_audited_and_take_effect_on_commit(
        tenant_admin, django_capture_on_commit_callbacks):
    user = tenant_admin.user
    assert _max_out(user) == 4_096  # the PRO plan's rule (and now cached)
    with django_capture_on_commit_callbacks(execute=True):
        rule = services.policy_rule_create(scope="TENANT", tenant=tenant_admin.tenant, key="max_tokens_out",
                                           value="1000", actor=user, source="CONSOLE")
    assert _max_out(user) == 1_000
    with django_capture_on_commit_callbacks(execute=True):
        services.policy_rule_update(rule_id=rule.pk, changes={"value": 2000, "note": "raised"}, actor=user,
                                    source="CONSOLE")
    assert _max_out(user) == 2_000
    with django_capture_on_commit_callbacks(execute=True):
        services.policy_rule_deactivate(rule_id=rule.pk, actor=user, source="CONSOLE")
    assert _max_out(user) == 4_096
    rule.refresh_from_db()
    assert rule.is_active is False
    with django_capture_on_commit_callbacks(execute=True):
        services.policy_rule_activate(rule_id=rule.pk, actor=user, source="CONSOLE")
    assert _max_out(user) == 2_000
    with django_capture_on_commit_callbacks(execute=True):
        services.policy_rule_delete(rule_id=rule.pk, actor=user, source="CONSOLE")
    assert _max_out(user) == 4_096
    assert not PolicyRule.objects.filter(pk=rule.pk).exists()

    events = list(AuditEvent.objects.filter(object_type="policy_rule", object_id=str(rule.pk)).order_by("id"))
    assert [e.action for e in events] == ["policy_rule.create", "policy_rule.update", "policy_rule.deactivate",
                                          "policy_rule.activate", "policy_rule.delete"]
    assert all(e.tenant_id == tenant_admin.tenant.pk and e.actor == user and e.source == "CONSOLE" for e in events)
    assert events[0].after["value"] == 1000
    assert (events[1].before, events[1].after) == ({"value": 1000, "note": ""}, {"value": 2000, "note": "raised"})
    assert events[4].before["value"] == 2000


def test_a_change_that_changes_nothing_writes_no_audit_row(tenant_admin):
    rule = services.policy_rule_create(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_rpm", value=5)
    count = AuditEvent.objects.count()
    services.policy_rule_update(rule_id=rule.pk, changes={"value": "5"})
    assert AuditEvent.objects.count() == count


def test_where_keeps_other_subjects_rules_out_of_reach(tenant_admin, outsider):
    theirs = services.policy_rule_create(scope="TENANT", tenant=outsider.tenant, key="tenant_rpm", value=5)
    for write in (lambda: services.policy_rule_update(rule_id=theirs.pk, changes={"value": 1},
                                                      where={"tenant": tenant_admin.tenant}),
                  lambda: services.policy_rule_deactivate(rule_id=theirs.pk, where={"tenant": tenant_admin.tenant}),
                  lambda: services.policy_rule_delete(rule_id=theirs.pk, where={"tenant": tenant_admin.tenant})):
        with pytest.raises(NotFound):
            write()
    theirs.refresh_from_db()
    assert (theirs.value, theirs.is_active) == (5, True)


def test_an_edit_of_a_seeded_rule_is_the_operators(catalog):
    seeded = PolicyRule.objects.filter(scope="PLAN", plan=Plan.objects.get(code="PRO"), seeded=True).first()
    assert seeded is not None
    services.policy_rule_update(rule_id=seeded.pk, changes={"note": "ours now"})
    seeded.refresh_from_db()
    assert seeded.seeded is False


def test_unknown_fields_are_refused(tenant_admin):
    rule = services.policy_rule_create(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_rpm", value=5)
    with pytest.raises(BadRequest):
        services.policy_rule_update(rule_id=rule.pk, changes={"seeded": True})
