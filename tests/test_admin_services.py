"""The Django Admin changes things only through the services: invalid rules are refused at their
fields, every save is audited with the staff user as actor, caches follow on commit, and each model
has exactly one admin, in the app that owns it."""

from __future__ import annotations

import importlib.util

import pytest
from django.apps import apps
from django.contrib import admin
from django.utils import timezone

from catalog.models import Plan, ProviderModel
from metering.models import PolicyRule
from metering.policy import effective_limits
from tenants.audit import AuditEvent
from tenants.models import Tenant, User
from tests.conftest import PASSWORD, assert_error
from tests.test_admin import admin_url, form_errors, resolve, rule_data

ME = "/api/me/"


def page_errors(response) -> list:
    """The change form's and its inlines' errors on a re-rendered admin page."""
    context = response.context
    found = [context["adminform"].form.errors] if "adminform" in context else []
    for admin_formset in context.get("inline_admin_formsets", []):
        found.append((admin_formset.formset.prefix, admin_formset.formset.errors,
                      admin_formset.formset.non_form_errors()))
    return found


def events(**filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


def max_out(user) -> int:
    limits = effective_limits(context=resolve(user), task_code="LLM2_DRAFT", now=timezone.now())
    return {(x.key, x.task_code): x.value for x in limits}[("max_tokens_out", None)]


# ----------------------------------------------------------------------------------- one admin each


def test_every_model_of_the_gateway_has_one_admin_in_its_own_app():
    for model, model_admin in admin.site._registry.items():
        app = model._meta.app_label
        if app in {"catalog", "tenants", "metering", "llm", "adminconsole"}:
            assert type(model_admin).__module__.split(".")[0] == app, (model, type(model_admin))
    # The higher apps' rows appear on the lower apps' pages as inlines, not by re-registering them.
    from catalog.admin import PlanAdmin
    from tenants.admin import TenantAdmin, UserAdmin

    assert type(admin.site._registry[Plan]) is PlanAdmin
    assert type(admin.site._registry[Tenant]) is TenantAdmin
    assert type(admin.site._registry[User]) is UserAdmin
    assert any(inline.model is PolicyRule for inline in PlanAdmin.inlines)
    assert any(inline.model is PolicyRule for inline in TenantAdmin.inlines)


def test_no_signals_keep_the_identity_cache():
    assert importlib.util.find_spec("tenants.signals") is None
    from django.db.models.signals import post_delete, post_save

    for signal in (post_save, post_delete):
        for model in (Tenant, User, apps.get_model("tenants", "ATIToken")):
            assert not signal.has_listeners(model), (signal, model)


# ------------------------------------------------------------------------------------- policy rules


def test_an_invalid_rule_is_refused_with_a_form_error_and_nothing_is_written(admin_client, catalog):
    rules, audit = PolicyRule.objects.count(), AuditEvent.objects.count()
    response = admin_client.post(admin_url(PolicyRule, "add"),
                                 rule_data(start_time="09:00", end_time="09:00", weekdays=["0"]))
    assert "The window is empty" in form_errors(response)
    assert (PolicyRule.objects.count(), AuditEvent.objects.count()) == (rules, audit)


def test_a_rule_saved_in_the_admin_is_audited_and_enforced_from_the_next_call(
        admin_client, admin_user, tenant_admin, django_capture_on_commit_callbacks):
    assert max_out(tenant_admin.user) == 4_096  # cached now
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(admin_url(PolicyRule, "add"),
                                     rule_data(scope="TENANT", tenant=tenant_admin.tenant.pk, value="1500",
                                               note="from the admin"))
    assert response.status_code == 302, form_errors(response)
    rule = PolicyRule.objects.get(note="from the admin")
    assert max_out(tenant_admin.user) == 1_500
    [created] = events(action="policy_rule.create", object_id=str(rule.pk))
    assert (created.actor, created.source, created.tenant_id) == (admin_user, "ADMIN", tenant_admin.tenant.pk)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(admin_url(PolicyRule, "changelist"),
                                     {"action": "deactivate_rules", "_selected_action": [rule.pk]})
    assert response.status_code == 302
    assert max_out(tenant_admin.user) == 4_096
    assert [e.source for e in events(action="policy_rule.deactivate", object_id=str(rule.pk))] == ["ADMIN"]

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(admin_url(PolicyRule, "delete", rule.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not PolicyRule.objects.filter(pk=rule.pk).exists()
    [deleted] = events(action="policy_rule.delete", object_id=str(rule.pk))
    assert deleted.actor == admin_user and deleted.before["value"] == 1500


def test_the_tenant_pages_rule_inline_saves_through_the_service(admin_client, admin_user, tenant_admin):
    tenant = tenant_admin.tenant
    page = admin_client.get(admin_url(Tenant, "change", tenant.pk))
    data = {"name": tenant.name, "slug": tenant.slug, "status": tenant.status, "enforcement_mode": ""}
    for admin_formset in page.context["inline_admin_formsets"]:
        formset = admin_formset.formset
        for key, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{key}"] = value
        for form in formset.forms:
            for name in form.fields:
                value = form.instance.pk if name == "id" else form.initial.get(name)
                if isinstance(value, bool):
                    if value:
                        data[form.add_prefix(name)] = "on"
                elif value is not None:
                    data[form.add_prefix(name)] = getattr(value, "pk", value)
    rules = next(fs.formset for fs in page.context["inline_admin_formsets"] if fs.formset.model is PolicyRule)
    total = len(rules.forms)
    data[f"{rules.prefix}-TOTAL_FORMS"] = total + 1
    new = f"{rules.prefix}-{total}"
    data.update({f"{new}-key": "tenant_rpm", f"{new}-value": "30", f"{new}-is_active": "on",
                 f"{new}-note": "inline override"})
    response = admin_client.post(admin_url(Tenant, "change", tenant.pk), data)
    assert response.status_code == 302, page_errors(response)
    rule = PolicyRule.objects.get(note="inline override")
    assert (rule.scope, rule.tenant_id, rule.value) == ("TENANT", tenant.pk, 30)
    [created] = events(action="policy_rule.create", object_id=str(rule.pk))
    assert created.actor == admin_user and created.source == "ADMIN"


# ----------------------------------------------------------------------------------- tenants, users


def test_a_tenant_suspended_in_the_change_form_is_refused_on_its_next_request(
        admin_client, admin_user, tenant_admin, django_capture_on_commit_callbacks):
    tenant = tenant_admin.tenant
    assert tenant_admin.client.get(ME).status_code == 200  # its identity is cached now
    data = {"name": tenant.name, "slug": tenant.slug, "status": "SUSPENDED", "enforcement_mode": "",
            "users-TOTAL_FORMS": 0, "users-INITIAL_FORMS": 0}
    page = admin_client.get(admin_url(Tenant, "change", tenant.pk))
    for admin_formset in page.context["inline_admin_formsets"]:
        formset = admin_formset.formset
        data.update({f"{formset.prefix}-{k}": v for k, v in formset.management_form.initial.items()})
        data[f"{formset.prefix}-TOTAL_FORMS"] = data[f"{formset.prefix}-INITIAL_FORMS"] = 0
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(admin_url(Tenant, "change", tenant.pk), data)
    assert response.status_code == 302, page_errors(response)
    assert_error(tenant_admin.client.get(ME), 403, "tenant_suspended")
    [change] = events(action="tenant.status_change", object_id=str(tenant.pk))
    assert (change.before, change.after, change.actor) == ({"status": "ACTIVE"}, {"status": "SUSPENDED"}, admin_user)


def test_a_user_deactivated_in_the_admin_is_refused_and_audited(
        admin_client, admin_user, member, django_capture_on_commit_callbacks):
    user = member.user
    assert member.client.get(ME).status_code == 200
    page = admin_client.get(admin_url(User, "change", user.pk))
    form = page.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if name == "is_active" or value is None or name == "password":
            continue
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, (list, tuple)):
            data[name] = [getattr(v, "pk", v) for v in value]
        else:
            data[name] = getattr(value, "pk", value)
    data["role"] = "ADMIN"
    for admin_formset in page.context["inline_admin_formsets"]:
        formset = admin_formset.formset
        data.update({f"{formset.prefix}-{k}": v for k, v in formset.management_form.initial.items()})
    data["last_login_0"] = data["last_login_1"] = ""
    data["date_joined_0"], data["date_joined_1"] = timezone.localtime(user.date_joined).strftime(
        "%Y-%m-%d"), timezone.localtime(user.date_joined).strftime("%H:%M:%S")
    last = AuditEvent.objects.order_by("id").last()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(admin_url(User, "change", user.pk), data)
    assert response.status_code == 302, form_errors(response)
    assert_error(member.client.get(ME), 401, "user_inactive")
    trail = events(object_type="user", object_id=str(user.pk), id__gt=last.pk if last else 0)
    assert sorted(e.action for e in trail) == ["user.deactivate", "user.role_change"]
    assert all(e.actor == admin_user and e.source == "ADMIN" for e in trail)


def test_tenant_users_created_promoted_and_deactivated_over_the_api_are_audited(
        tenant_admin, django_capture_on_commit_callbacks):
    client = tenant_admin.client
    response = client.post("/api/tenant/users/", {"username": "newbie", "email": "n@example.com",
                                                   "password": PASSWORD, "role": "MEMBER"}, format="json")
    assert response.status_code == 201, response.content
    user_id = response.json()["id"]
    assert client.patch(f"/api/tenant/users/{user_id}/", {"role": "ADMIN"}, format="json").status_code == 200
    assert client.delete(f"/api/tenant/users/{user_id}/").status_code == 204
    trail = events(object_type="user", object_id=str(user_id))
    assert [e.action for e in trail] == ["user.create", "user.role_change", "user.deactivate"]
    assert trail[0].after["username"] == "newbie" and "password" not in trail[0].after
    assert (trail[1].before, trail[1].after) == ({"role": "MEMBER"}, {"role": "ADMIN"})
    assert all(e.tenant_id == tenant_admin.tenant.pk for e in trail)
    assert all(e.actor == tenant_admin.user and e.source == "API" for e in trail[1:])


# --------------------------------------------------------------------------------------- catalog


def test_catalog_edits_in_the_admin_are_audited(admin_client, admin_user, catalog):
    model = ProviderModel.objects.filter(is_active=True).first()
    data = {"provider": model.provider, "model_name": model.model_name, "model_class": model.model_class_id,
            "priority": model.priority, "is_active": "on",
            "input_price_per_mtok_micro_usd": (model.input_price_per_mtok_micro_usd or 0) + 1,
            "output_price_per_mtok_micro_usd": model.output_price_per_mtok_micro_usd or 0,
            "context_window": model.context_window, "max_output_tokens": model.max_output_tokens}
    page = admin_client.get(admin_url(ProviderModel, "change", model.pk))
    for name in page.context["adminform"].form.fields:
        if name not in data:
            value = page.context["adminform"].form.initial.get(name)
            if isinstance(value, bool):
                if value:
                    data[name] = "on"
            elif value is not None:
                data[name] = value
    response = admin_client.post(admin_url(ProviderModel, "change", model.pk), data)
    assert response.status_code == 302, form_errors(response)
    [price] = events(action="providermodel.update", object_id=str(model.pk))
    assert price.actor == admin_user and price.source == "ADMIN"
    assert price.after == {"input_price_per_mtok_micro_usd": data["input_price_per_mtok_micro_usd"]}

    plan = Plan.objects.get(code="FREE")
    response = admin_client.post(admin_url(Plan, "changelist"), {"action": "delete_selected",
                                                                  "_selected_action": [plan.pk]})
    assert response.status_code == 200  # the confirmation page: nothing deleted, nothing recorded
    assert not events(object_type="plan", action="plan.delete")


# -------------------------------------------------------------------------------------- sign-ins


def test_staff_sign_ins_and_failed_sign_ins_are_audited(client, admin_user):
    response = client.post("/admin/login/", {"username": admin_user.username, "password": "wrong"})
    assert response.status_code == 200
    [failed] = events(action="auth.login_failed")
    assert failed.after["username"] == admin_user.username and failed.after["known_account"] is True
    assert "wrong" not in str(failed.after) and failed.actor is None

    client.force_login(admin_user)
    [login] = events(action="auth.login")
    assert login.actor == admin_user and login.object_id == str(admin_user.pk)


def test_a_tenant_users_api_sign_in_is_not_a_staff_event(member):
    from rest_framework.test import APIClient

    response = APIClient().post("/api/auth/token/", {"username": member.user.username, "password": "nope"},
                                format="json")
    assert response.status_code in (400, 401)
    assert not events(action__startswith="auth.")


def test_the_audit_trail_is_read_only_in_the_admin(admin_client, admin_user, catalog):
    event = AuditEvent.objects.create(source="COMMAND", action="x.y", object_type="x", object_id="1")
    assert admin_client.get(admin_url(AuditEvent, "change", event.pk)).status_code == 200  # view only
    assert admin_client.post(admin_url(AuditEvent, "delete", event.pk), {"post": "yes"}).status_code == 403


@pytest.mark.parametrize("url", ["/admin/metering/policyrule/", "/admin/tenants/auditevent/"])
def test_outsiders_do_not_get_the_admin(client, outsider, url):
    client.force_login(outsider.user)
    response = client.get(url)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
