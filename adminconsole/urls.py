from django.urls import path

from adminconsole import views, views_reconcile, views_rollout

app_name = "adminconsole"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("live/", views.overview_live, name="overview_live"),
    path("providers/", views.providers, name="providers"),
    path("providers/live/", views.providers_live, name="providers_live"),
    path("overrides/", views.overrides, name="overrides"),
    path("tenants/", views.tenant_list, name="tenants"),
    path("tenants/<slug:slug>/", views.tenant_detail, name="tenant"),
    path("tenants/<slug:slug>/live/", views.tenant_live, name="tenant_live"),
    path("plan-changes/", views.plan_changes, name="plan_changes"),
    path("plans/", views.plan_matrix, name="plan_matrix"),
    path("quota-requests/", views.quota_requests, name="quota_requests"),
    path("quota-requests/<int:request_id>/decide/", views.quota_request_decide, name="quota_request_decide"),
    path("audit/", views.audit_log, name="audit"),
    path("reports/", views.reports, name="reports"),
    path("rollout/", views_rollout.rollout, name="rollout"),
    path("tenants/<slug:slug>/enforcement-mode/", views_rollout.tenant_enforcement_mode,
         name="tenant_enforcement_mode"),
    path("reconciliation/", views_reconcile.reconciliation, name="reconciliation"),
]
