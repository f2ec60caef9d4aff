"""Overrides editor, plan changes (effective on the next call) and the plan matrix."""

from __future__ import annotations

import pytest

from catalog.models import PlanLLMAccess
from catalog.selectors import plan_entitlements
from metering.models import PolicyRule
from tenants.audit import AuditEvent
from tests.adminconsole.conftest import messages_of

pytestmark = pytest.mark.django_db


def _post(client, url, data):
    return client.post(url, data, follow=True)


# ------------------------------------------------------------------------------------------ overrides


def test_override_is_created_updated_shown_and_removed(su_client, tenant_admin, django_capture_on_commit_callbacks):
    url = f"/console/tenants/{tenant_admin.tenant.slug}/"
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, url, {"action": "create", "key": "tenant_tokens_per_day", "task": "",
                                          "value": "123456", "note": "pilot"})
    assert any("Override saved" in m for m in messages_of(response))
    rule = PolicyRule.objects.get(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day")
    assert rule.value == 123456 and rule.task is None and rule.note == "pilot"
    limits = {(r["task"], r["key"]): r for r in response.context["data"]["limits"]}
    row = limits[("LLM2_DRAFT", "tenant_tokens_per_day")]
    assert row["value"] == "123,456" and f"tenant {tenant_admin.tenant.slug}" in row["source"]
    # The caller's own API agrees.
    body = tenant_admin.client.get("/api/limits/").json()["limits"]["LLM2_DRAFT"]
    assert any(x["key"] == "tenant_tokens_per_day" and x["value"] == 123456 for x in body)

    with django_capture_on_commit_callbacks(execute=True):
        _post(su_client, url, {"action": "create", "key": "tenant_tokens_per_day", "task": "", "value": "200000"})
    rule.refresh_from_db()
    assert rule.value == 200000
    assert PolicyRule.objects.filter(scope="TENANT", tenant=tenant_admin.tenant).count() == 1
    update = AuditEvent.objects.get(action="policy_rule.update")
    assert (update.before, update.after, update.source) == ({"value": 123456}, {"value": 200000}, "CONSOLE")

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, url, {"action": "delete", "rule": rule.pk})
    assert not PolicyRule.objects.filter(pk=rule.pk).exists()
    assert AuditEvent.objects.filter(action="policy_rule.delete", object_id=str(rule.pk)).exists()


@pytest.mark.parametrize("data, message", [
    ({"key": "tenant_tokens_per_day", "value": "lots"}, "takes a whole number"),
    ({"key": "tenant_tokens_per_day", "value": "-5"}, "cannot be negative"),
    ({"key": "no_such_key", "value": "5"}, "Unknown policy key"),
    ({"key": "allowed_model_classes", "value": "BASE_S, HUGE"}, "Unknown model classes"),
    ({"key": "tenant_cost_per_month_usd", "value": "1.0000001"}, "more than 6 decimal places"),
    ({"key": "max_tokens_out", "value": "10", "task": "NOPE"}, "Unknown task"),
])
def test_override_validation_errors_are_shown_and_nothing_is_saved(su_client, tenant_admin, data, message):
    response = _post(su_client, f"/console/tenants/{tenant_admin.tenant.slug}/", {"action": "create", **data})
    assert response.status_code == 200
    assert any(message in m for m in messages_of(response)), messages_of(response)
    assert not PolicyRule.objects.filter(scope="TENANT", tenant=tenant_admin.tenant).exists()
    # What was typed comes back in the form.
    assert f'value="{data["value"]}"' in response.content.decode()


def test_an_override_of_another_tenant_cannot_be_removed_from_this_page(su_client, tenant_admin, outsider):
    theirs = PolicyRule.objects.create(scope="TENANT", tenant=outsider.tenant, key="tenant_rpm", value=5)
    response = _post(su_client, f"/console/tenants/{tenant_admin.tenant.slug}/", {"action": "delete", "rule": theirs.pk})
    assert any("No such rule" in m for m in messages_of(response))
    assert PolicyRule.objects.filter(pk=theirs.pk).exists()


# --------------------------------------------------------------------------------------- plan changes


def test_plan_change_is_effective_on_the_next_call(su_client, tenant_admin, django_capture_on_commit_callbacks):
    assert tenant_admin.client.get("/api/me/").json()["plan"] == "PRO"  # now cached
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, "/console/plan-changes/", {"tenant": tenant_admin.tenant.slug,
                                                                "plan": "ENTERPRISE"})
    assert any("moved from PRO to ENTERPRISE" in m for m in messages_of(response))
    assert tenant_admin.client.get("/api/me/").json()["plan"] == "ENTERPRISE"
    event = AuditEvent.objects.get(action="tenant.plan_change")
    assert (event.before, event.after) == ({"plan_tier": "PRO"}, {"plan_tier": "ENTERPRISE"})
    assert (event.source, event.actor_label, event.tenant_id) == ("CONSOLE", "root-admin", tenant_admin.tenant.pk)
    # The page lists it.
    assert "ENTERPRISE" in su_client.get("/console/plan-changes/").content.decode()


def test_plan_change_from_the_tenant_page_returns_there(su_client, tenant_admin):
    url = f"/console/tenants/{tenant_admin.tenant.slug}/"
    response = su_client.post("/console/plan-changes/", {"tenant": tenant_admin.tenant.slug, "plan": "FREE",
                                                          "next": url})
    assert response.status_code == 302 and response["Location"] == url
    response = su_client.post("/console/plan-changes/", {"tenant": tenant_admin.tenant.slug, "plan": "PRO",
                                                          "next": "https://elsewhere.example/"})
    assert response["Location"] == "/console/plan-changes/"


@pytest.mark.parametrize("plan, message", [("GOLD", "Unknown plan"), ("PRO", "already on plan PRO")])
def test_bad_plan_changes_are_refused(su_client, tenant_admin, plan, message):
    response = _post(su_client, "/console/plan-changes/", {"tenant": tenant_admin.tenant.slug, "plan": plan})
    assert any(message in m for m in messages_of(response)), messages_of(response)
    assert not AuditEvent.objects.filter(action="tenant.plan_change").exists()


def test_a_revoked_token_is_not_re_tiered(su_client, tenant_admin):
    from tenants.services import ati_token_revoke

    ati_token_revoke(ati_id=tenant_admin.tenant.signup_ati_token_id)
    response = _post(su_client, "/console/plan-changes/", {"tenant": tenant_admin.tenant.slug, "plan": "FREE"})
    assert any("revoked" in m for m in messages_of(response))


# ---------------------------------------------------------------------------------------- plan matrix


def _matrix_form(plan_code: str) -> dict:
    """The current matrix of one plan, as the page's form posts it."""
    from catalog.models import Plan, PlanFeature

    plan = Plan.objects.get(code=plan_code)
    access = [f"{a.task_id}:{mc.pk}" for a in PlanLLMAccess.objects.filter(plan=plan) for mc in a.model_classes.all()]
    return {"plan": plan.pk, "action": "matrix",
            "feature": list(PlanFeature.objects.filter(plan=plan).values_list("feature_id", flat=True)),
            "access": access}


def test_plan_matrix_edit_in_place_invalidates_the_caches(su_client, tenant_admin, django_capture_on_commit_callbacks):
    from catalog.models import ModelClass, Plan, Task

    plan = Plan.objects.get(code="PRO")
    diagram = Task.objects.get(code="LLM3_DIAGRAM")
    assert plan_entitlements(plan.pk).model_classes["LLM3_DIAGRAM"] == ("BASE_M", "PRO_M")  # cached now
    form = _matrix_form("PRO")
    form["access"].append(f"{diagram.pk}:{ModelClass.objects.get(code='PRO_L').pk}")
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(su_client, "/console/plans/", form)
    assert any("saved" in m for m in messages_of(response))
    assert plan_entitlements(plan.pk).model_classes["LLM3_DIAGRAM"] == ("BASE_M", "PRO_M", "PRO_L")
    event = AuditEvent.objects.get(action="plan.matrix_update")
    assert event.after["access"]["LLM3_DIAGRAM"] == ["BASE_M", "PRO_L", "PRO_M"]
    # The page shows the box ticked.
    assert f'value="{diagram.pk}:{ModelClass.objects.get(code="PRO_L").pk}" aria-label="PRO LLM3_DIAGRAM PRO_L" ' \
           f'checked' in response.content.decode()


def test_plan_matrix_refuses_a_task_without_its_feature(su_client, catalog):
    from catalog.models import Feature, Plan

    form = _matrix_form("FREE")
    diagram_feature = Feature.objects.get(code="DIAGRAM_GENERATION").pk
    form["feature"] = [f for f in form["feature"] if f != diagram_feature]
    response = _post(su_client, "/console/plans/", form)
    assert any("LLM3_DIAGRAM needs feature DIAGRAM_GENERATION" in m for m in messages_of(response))
    assert Plan.objects.get(code="FREE").plan_features.filter(feature_id=diagram_feature).exists()


def test_plan_default_rules_are_edited_with_validation(su_client, catalog):
    from catalog.models import Plan

    plan = Plan.objects.get(code="FREE")
    response = _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "rule", "key": "tenant_rpm",
                                                     "task": "", "value": "45"})
    assert any("default rule tenant_rpm = 45 saved" in m for m in messages_of(response))
    rule = PolicyRule.objects.get(scope="PLAN", plan=plan, key="tenant_rpm", task=None, when_quota_key="")
    assert rule.value == 45 and not rule.seeded
    response = _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "rule", "key": "tenant_rpm",
                                                     "value": "fast"})
    assert any(m.startswith("FREE: ") and "'tenant_rpm' takes a whole number" in m for m in messages_of(response))
    response = _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "delete_rule", "rule": rule.pk})
    assert not PolicyRule.objects.filter(pk=rule.pk).exists()


def test_rules_are_edited_in_place_keeping_their_condition(su_client, tenant_admin):
    from catalog.models import Plan

    plan = Plan.objects.get(code="PRO")
    throttle = PolicyRule.objects.get(scope="PLAN", plan=plan, key="max_tokens_out", when_quota_key__gt="")
    plain = PolicyRule.objects.get(scope="PLAN", plan=plan, key="max_tokens_out", when_quota_key="")
    response = _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "edit_rule", "rule": throttle.pk,
                                                     "value": "512"})
    assert any("max_tokens_out is now 512" in m for m in messages_of(response))
    throttle.refresh_from_db()
    plain.refresh_from_db()
    assert (throttle.value, throttle.when_quota_key, throttle.when_usage_percent_gte) == (
        512, "tenant_tokens_per_month", 90)
    assert plain.value == 4096  # the unconditional rule is another rule
    usd = PolicyRule.objects.get(scope="PLAN", plan=plan, key="tenant_cost_per_month_usd")
    _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "edit_rule", "rule": usd.pk, "value": "300.25"})
    usd.refresh_from_db()
    assert usd.value == "300.25"
    response = _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "edit_rule", "rule": usd.pk,
                                                     "value": "lots"})
    assert any("not an amount of USD" in m for m in messages_of(response))
    # A rule of another plan is not editable through this plan's form.
    free_rule = PolicyRule.objects.filter(scope="PLAN", plan__code="FREE").first()
    response = _post(su_client, "/console/plans/", {"plan": plan.pk, "action": "edit_rule", "rule": free_rule.pk,
                                                     "value": "1"})
    assert any("No such rule" in m for m in messages_of(response))

    override = PolicyRule.objects.create(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_rpm", value=5)
    response = _post(su_client, f"/console/tenants/{tenant_admin.tenant.slug}/", {"action": "value",
                                                                                  "rule": override.pk, "value": "50"})
    assert any("tenant_rpm is now 50" in m for m in messages_of(response))
    override.refresh_from_db()
    assert override.value == 50
