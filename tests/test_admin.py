"""Django Admin: every page loads for a super admin, and the admin's writes keep the gateway's rules."""

from __future__ import annotations

import re
import types
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from catalog.models import Plan, ProviderModel, Task
from gateway_project.errors import Forbidden
from metering.models import (
    Notification,
    PolicyRule,
    QuotaAlert,
    UsageHold,
    UsageLog,
    UsageMeter,
    UsageReservation,
)
from tenants.models import ATIToken, Tenant, User
from tenants.selectors import identity_resolve
from tests.conftest import PASSWORD


def admin_url(model, view: str, *args) -> str:
    # Quoted as the admin quotes its own links: a text primary key (ATI ids) can hold "_" followed
    # by two hex digits, which the admin would otherwise unquote into another id (a flaky redirect).
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}",
                   args=[quote(arg) for arg in args])


def superuser_request(admin_user):
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    return request


def form_errors(response) -> str:
    """All errors of the admin form on a re-rendered page, as one string."""
    assert response.status_code == 200, response.status_code
    form = response.context["adminform"].form
    return " ".join(str(e) for errors in form.errors.values() for e in errors)


def resolve(user: User):
    tenant = user.tenant
    return identity_resolve(user_id=user.pk, tenant_id=tenant.pk, ati_id=tenant.signup_ati_token_id)


@pytest.fixture
def ledger(tenant_admin):
    """One row of every metering model, so changelists render real columns."""
    now = timezone.now()
    tenant, user = tenant_admin.tenant, tenant_admin.user
    task = Task.objects.get(code="LLM1_PRIOR_ART")
    meter = UsageMeter.objects.create(
        tenant=tenant, metric="TOKENS", window="MONTH", period_start=now.replace(day=1), used=900, reserved=100
    )
    cost_meter = UsageMeter.objects.create(
        tenant=tenant, user=user, metric="COST", window="DAY", period_start=now, used=1_234_500
    )
    reservation = UsageReservation.objects.create(
        request_id="req-stuck-1", tenant=tenant, user=user, task=task, enforcement_mode="HARD",
        expires_at=now - timedelta(minutes=5), created_at=now - timedelta(minutes=10),
    )
    hold_fields = {f.name for f in UsageHold._meta.get_fields()}
    wanted = {"policy_key": "tenant_tokens_per_month", "limit_value": 1000}
    extra = {k: v for k, v in wanted.items() if k in hold_fields}
    UsageHold.objects.create(reservation=reservation, meter=meter, amount=100, **extra)
    UsageLog.objects.create(
        request_id="req-done-1", tenant=tenant, user=user, task=task, feature_code="PRIOR_ART_SEARCH",
        provider="offline", model_name="offline-base-s", model_class="BASE_S", tokens_in=100, tokens_out=50,
        api_calls=1, cost_micro_usd=45, latency_ms=12, status="SUCCESS", enforcement_mode="HARD",
        admitted_at=now, created_at=now,
    )
    alert = QuotaAlert.objects.create(
        tenant=tenant, meter=meter, kind="QUOTA_WARNING", period_start=meter.period_start,
        policy_key="tenant_tokens_per_month", limit_value=1000, observed_value=900,
    )
    Notification.objects.create(tenant=tenant, user=user, alert=alert, kind="QUOTA_WARNING", title="80 % used")
    return types.SimpleNamespace(meter=meter, cost_meter=cost_meter, reservation=reservation, alert=alert)


# ------------------------------------------------------------------------------------ every page loads


def test_every_admin_page_loads_for_a_super_admin(admin_client, admin_user, ledger, member):
    request = superuser_request(admin_user)
    assert len(admin.site._registry) >= 14
    for model, model_admin in admin.site._registry.items():
        changelist = admin_client.get(admin_url(model, "changelist"))
        assert changelist.status_code == 200, (model, changelist.status_code)
        if model_admin.search_fields:
            searched = admin_client.get(admin_url(model, "changelist"), {"q": "acme"})
            assert searched.status_code == 200, model
        add = admin_client.get(admin_url(model, "add"))
        expected = 200 if model_admin.has_add_permission(request) else 403
        assert add.status_code == expected, (model, add.status_code)
        obj = model_admin.get_queryset(request).first()
        if obj is not None:
            change = admin_client.get(admin_url(model, "change", obj.pk))
            assert change.status_code == 200, (model, change.status_code)


def test_changelists_do_not_query_per_row(admin_client, ledger, outsider, django_assert_max_num_queries):
    for index in range(5):
        UsageLog.objects.create(
            request_id=f"req-extra-{index}", tenant=outsider.tenant, user=outsider.user,
            task=Task.objects.get(code="LLM2_DRAFT"), feature_code="PATENT_DRAFTING", status="SUCCESS",
            enforcement_mode="SOFT", admitted_at=timezone.now(), created_at=timezone.now(),
        )
    # A fixed budget however many rows there are: no N+1 on tenant/user/task columns.
    for model in (UsageLog, Tenant, ATIToken, PolicyRule, ProviderModel, User, Plan):
        with django_assert_max_num_queries(20):
            assert admin_client.get(admin_url(model, "changelist")).status_code == 200


def test_non_staff_tenant_user_is_sent_to_the_admin_login(client, tenant_admin):
    client.force_login(tenant_admin.user)
    for url in ("/admin/", admin_url(Tenant, "changelist"), admin_url(UsageLog, "changelist")):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), response["Location"]


# ---------------------------------------------------------------------------------------- ATI tokens


def test_ati_token_add_shows_the_secret_once_and_stores_only_its_hash(admin_client, catalog):
    response = admin_client.post(
        admin_url(ATIToken, "add"), {"plan_tier": "PRO", "expires_days": "30", "note": "for Initech"}, follow=True
    )
    assert response.status_code == 200
    secrets_shown = re.findall(r"ati_secret_[A-Za-z0-9_\-]+", response.content.decode())
    assert len(secrets_shown) == 1, secrets_shown
    secret = secrets_shown[0]

    token = ATIToken.objects.get(note="for Initech")
    assert token.plan_tier == "PRO" and token.status == ATIToken.Status.ACTIVE
    assert token.secret_hash == ATIToken.hash_secret(secret)
    assert secret not in {str(value) for value in ATIToken.objects.filter(pk=token.pk).values().first().values()}
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)

    # Never again: not on the change page, not on the list, and the hash is never shown either.
    for url in (admin_url(ATIToken, "change", token.pk), admin_url(ATIToken, "changelist")):
        page = admin_client.get(url).content.decode()
        assert secret not in page and token.secret_hash not in page


def test_ati_token_add_refuses_an_unknown_plan_and_a_bad_expiry(admin_client, catalog):
    response = admin_client.post(admin_url(ATIToken, "add"), {"plan_tier": "GOLD", "expires_days": "0"})
    errors = form_errors(response)
    assert "GOLD" in errors and "greater than or equal to 1" in errors
    assert not ATIToken.objects.exists()


def test_revoke_action_revokes_and_drops_the_cached_identity(
    admin_client, tenant_admin, django_capture_on_commit_callbacks
):
    resolve(tenant_admin.user)  # cached now
    token = tenant_admin.tenant.signup_ati_token
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            admin_url(ATIToken, "changelist"), {"action": "revoke_tokens", "_selected_action": [token.pk]}
        )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == ATIToken.Status.REVOKED
    with pytest.raises(Forbidden) as exc:
        resolve(tenant_admin.user)
    assert exc.value.code == "ati_token_revoked"


def test_editing_a_token_in_the_form_drops_the_cached_identity(
    admin_client, tenant_admin, django_capture_on_commit_callbacks
):
    resolve(tenant_admin.user)
    token = tenant_admin.tenant.signup_ati_token
    data = {"plan_tier": "PRO", "status": "REVOKED", "expires_at_0": "", "expires_at_1": "", "note": ""}
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(admin_url(ATIToken, "change", token.pk), data)
    assert response.status_code == 302, form_errors(response)
    with pytest.raises(Forbidden):
        resolve(tenant_admin.user)


# ------------------------------------------------------------------------------------------- tenants


def test_suspend_and_activate_actions(admin_client, tenant_admin, django_capture_on_commit_callbacks):
    tenant = tenant_admin.tenant
    resolve(tenant_admin.user)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            admin_url(Tenant, "changelist"), {"action": "suspend_tenants", "_selected_action": [tenant.pk]}
        )
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.SUSPENDED
    with pytest.raises(Forbidden) as exc:
        resolve(tenant_admin.user)
    assert exc.value.code == "tenant_suspended"

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            admin_url(Tenant, "changelist"), {"action": "activate_tenants", "_selected_action": [tenant.pk]}
        )
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.ACTIVE
    assert resolve(tenant_admin.user).tenant_id == tenant.pk


def test_tenant_changelist_shows_plan_and_enforcement(admin_client, tenant_admin):
    page = admin_client.get(admin_url(Tenant, "changelist")).content.decode()
    assert tenant_admin.tenant.slug in page and ">PRO<" in page and "inherit (" in page


def test_adding_a_tenant_in_the_admin_is_the_signup(admin_client, catalog):
    data = {
        "name": "Initech IP", "plan": "ENTERPRISE", "ati_secret": "",
        "admin_username": "initech-admin", "admin_email": "a@initech.example", "admin_password": PASSWORD,
    }
    response = admin_client.post(admin_url(Tenant, "add"), data)
    assert response.status_code == 302
    tenant = Tenant.objects.get(name="Initech IP")
    assert tenant.plan_code == "ENTERPRISE"
    assert tenant.signup_ati_token.tenant_id == tenant.pk
    admin_user = User.objects.get(username="initech-admin")
    assert admin_user.tenant_id == tenant.pk and admin_user.role == User.Role.ADMIN

    # A refused signup is a form error and leaves nothing behind (not even the token issued for it).
    tokens_before = ATIToken.objects.count()
    response = admin_client.post(admin_url(Tenant, "add"), {**data, "name": "Dup Co"})
    assert "initech-admin" in form_errors(response)
    assert not Tenant.objects.filter(name="Dup Co").exists()
    assert ATIToken.objects.count() == tokens_before


def test_user_admin_requires_a_tenant_for_non_staff(admin_client, tenant_admin):
    data = {
        "username": "floating", "usable_password": "true", "password1": PASSWORD, "password2": PASSWORD,
        "tenant": "", "role": "MEMBER", "email": "f@example.com",
    }
    response = admin_client.post(admin_url(User, "add"), data)
    assert "Pick the tenant" in form_errors(response)
    response = admin_client.post(admin_url(User, "add"), {**data, "tenant": tenant_admin.tenant.pk})
    assert response.status_code == 302
    assert User.objects.get(username="floating").tenant_id == tenant_admin.tenant.pk


# -------------------------------------------------------------------------------------- policy rules


def rule_data(**overrides) -> dict:
    data = {
        "scope": "GLOBAL", "plan": "", "tenant": "", "user": "", "task": "", "key": "max_tokens_out",
        "value": "2048", "is_active": "on", "note": "", "start_time": "", "end_time": "", "timezone": "UTC",
        "when_quota_key": "", "when_usage_percent_gte": "",
    }
    data.update(overrides)
    return data


def test_policy_rule_admin_rejects_an_unknown_key_with_the_registry_message(admin_client, catalog):
    response = admin_client.post(admin_url(PolicyRule, "add"), rule_data(key="tokens_forever"))
    errors = form_errors(response)
    assert "Unknown policy key 'tokens_forever'" in errors and "max_tokens_out" in errors
    assert not PolicyRule.objects.filter(key="tokens_forever").exists()


def test_policy_rule_admin_rejects_a_wrongly_typed_value(admin_client, catalog):
    before = PolicyRule.objects.count()
    response = admin_client.post(admin_url(PolicyRule, "add"), rule_data(value="lots"))
    assert "'max_tokens_out' takes a whole number of tokens, not 'lots'" in form_errors(response)
    response = admin_client.post(
        admin_url(PolicyRule, "add"), rule_data(key="allowed_model_classes", value="BASE_S, HUGE")
    )
    assert "Unknown model classes ['HUGE']" in form_errors(response)
    assert PolicyRule.objects.count() == before


def test_policy_rule_admin_checks_scope_subject_and_condition(admin_client, catalog):
    response = admin_client.post(admin_url(PolicyRule, "add"), rule_data(scope="PLAN"))
    assert "A PLAN rule needs a plan." in form_errors(response)
    response = admin_client.post(admin_url(PolicyRule, "add"), rule_data(when_usage_percent_gte="90"))
    assert "Pick the quota" in form_errors(response)
    response = admin_client.post(admin_url(PolicyRule, "add"), rule_data(timezone="Mars/Olympus"))
    assert "Unknown time zone" in form_errors(response)


def test_policy_rule_admin_saves_valid_rules_in_canonical_form(admin_client, tenant_admin):
    response = admin_client.post(admin_url(PolicyRule, "add"), rule_data(note="global cap"))
    assert response.status_code == 302
    rule = PolicyRule.objects.get(note="global cap")
    assert rule.value == 2048 and rule.scope == "GLOBAL" and not rule.seeded

    response = admin_client.post(
        admin_url(PolicyRule, "add"),
        rule_data(scope="TENANT", tenant=tenant_admin.tenant.pk, key="tenant_cost_per_month_usd", value="12.50",
                  weekdays=["0", "4"], start_time="09:00", end_time="17:00", timezone="Europe/Berlin",
                  note="business hours budget"),
    )
    assert response.status_code == 302
    rule = PolicyRule.objects.get(note="business hours budget")
    assert rule.value == "12.5" and rule.weekdays == [0, 4] and rule.tenant_id == tenant_admin.tenant.pk


def test_editing_a_seeded_rule_clears_seeded(admin_client, catalog):
    rule = PolicyRule.objects.filter(seeded=True, key="max_tokens_out", plan__code="PRO", task=None,
                                     when_quota_key="").get()
    data = rule_data(scope="PLAN", plan=rule.plan_id, value="3000")
    response = admin_client.post(admin_url(PolicyRule, "change", rule.pk), data)
    assert response.status_code == 302, form_errors(response)
    rule.refresh_from_db()
    assert rule.value == 3000 and rule.seeded is False


def test_plan_page_edits_rules_inline_with_validation(admin_client, catalog):
    plan = Plan.objects.get(code="FREE")
    page = admin_client.get(admin_url(Plan, "change", plan.pk))
    assert page.status_code == 200
    assert "default rules of this plan" in page.content.decode().lower()
    rule_formset = next(
        fs.formset for fs in page.context["inline_admin_formsets"] if fs.formset.model is PolicyRule
    )
    rule_prefix = rule_formset.prefix
    # Re-post the page as it is, plus one new rule with a wrongly typed value, then a good one.
    data = {}
    for admin_formset in page.context["inline_admin_formsets"]:
        formset = admin_formset.formset
        for key, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{key}"] = value
        for form in formset.forms:
            for name, field in form.fields.items():
                value = form.initial.get(name, field.initial)
                if value is None:
                    continue
                if isinstance(value, bool):
                    if value:
                        data[form.add_prefix(name)] = "on"
                elif isinstance(value, list):
                    data[form.add_prefix(name)] = [getattr(v, "pk", v) for v in value]
                else:
                    data[form.add_prefix(name)] = getattr(value, "pk", value)
    data.update({"code": plan.code, "name": plan.name, "description": plan.description, "is_active": "on"})
    total = len(rule_formset.forms)
    data[f"{rule_prefix}-TOTAL_FORMS"] = total + 1
    new = f"{rule_prefix}-{total}"
    data.update({f"{new}-key": "max_tokens_in", f"{new}-value": "lots", f"{new}-is_active": "on"})
    response = admin_client.post(admin_url(Plan, "change", plan.pk), data)
    assert response.status_code == 200
    assert "'max_tokens_in' takes a whole number of tokens" in response.content.decode().replace("&#x27;", "'")

    data[f"{new}-value"] = "5000"
    data[f"{new}-note"] = "inline rule"
    response = admin_client.post(admin_url(Plan, "change", plan.pk), data)
    assert response.status_code == 302
    rule = PolicyRule.objects.get(note="inline rule")
    assert (rule.scope, rule.plan_id, rule.value) == ("PLAN", plan.pk, 5000)


# ------------------------------------------------------------------------------ ledger and reservations


def test_usage_log_is_read_only(admin_client, admin_user, ledger):
    model_admin = admin.site._registry[UsageLog]
    request = superuser_request(admin_user)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert not model_admin.has_change_permission(request)
    row = UsageLog.objects.get()
    assert admin_client.get(admin_url(UsageLog, "add")).status_code == 403
    assert admin_client.get(admin_url(UsageLog, "delete", row.pk)).status_code == 403
    assert admin_client.post(admin_url(UsageLog, "change", row.pk), {"tokens_in": "0"}).status_code == 403
    row.refresh_from_db()
    assert row.tokens_in == 100
    page = admin_client.get(admin_url(UsageLog, "changelist"), {"q": "req-done-1"}).content.decode()
    assert "req-done-1" in page and "$0.000045" in page


def test_release_action_frees_the_holds_of_a_stuck_reservation(admin_client, ledger):
    response = admin_client.post(
        admin_url(UsageReservation, "changelist"),
        {"action": "release_reservations", "_selected_action": [ledger.reservation.pk]},
        follow=True,
    )
    assert "Released 1 reservation(s): req-stuck-1" in response.content.decode()
    ledger.reservation.refresh_from_db()
    ledger.meter.refresh_from_db()
    assert ledger.reservation.status == UsageReservation.Status.RELEASED
    assert (ledger.meter.used, ledger.meter.reserved) == (900, 0)  # released, nothing charged
    # No ledger row until the call reports what it used (then it is charged, flagged settled_late).
    assert not UsageLog.objects.filter(request_id="req-stuck-1").exists()
    # Releasing again changes nothing.
    response = admin_client.post(
        admin_url(UsageReservation, "changelist"),
        {"action": "release_reservations", "_selected_action": [ledger.reservation.pk]},
        follow=True,
    )
    assert "Skipped 1 reservation(s) that are not active." in response.content.decode()


def test_reservation_page_shows_its_holds_and_stuck_lease(admin_client, ledger):
    page = admin_client.get(admin_url(UsageReservation, "change", ledger.reservation.pk)).content.decode().lower()
    assert "holds (budget this reservation keeps on each meter)" in page and "900 / 100" in page
    listing = admin_client.get(admin_url(UsageReservation, "changelist"), {"lease": "stuck"}).content.decode()
    assert "req-stuck-1" in listing and "stuck (expired)" in listing


# ------------------------------------------------------------------------------------------- catalog


def test_provider_models_are_edited_in_the_list(admin_client, catalog):
    models = list(ProviderModel.objects.order_by("pk"))
    data = {"form-TOTAL_FORMS": len(models), "form-INITIAL_FORMS": len(models), "_save": "Save"}
    for index, row in enumerate(models):
        data[f"form-{index}-id"] = row.pk
        data[f"form-{index}-priority"] = 5 if row.model_name == "gpt-4o" else row.priority
        if row.is_active and row.model_name != "grok-3":
            data[f"form-{index}-is_active"] = "on"
    response = admin_client.post(admin_url(ProviderModel, "changelist"), data)
    assert response.status_code == 302
    assert ProviderModel.objects.get(model_name="gpt-4o").priority == 5
    assert ProviderModel.objects.get(model_name="grok-3").is_active is False
    page = admin_client.get(admin_url(ProviderModel, "changelist"), {"priced": "yes"}).content.decode()
    assert "$2.50 / 1M" in page
