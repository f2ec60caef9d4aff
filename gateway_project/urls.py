from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from adminconsole import apis as console_apis
from adminconsole import apis_rollout as console_rollout_apis
from adminconsole import sso
from gateway_project import health
from llm import apis as llm_apis

urlpatterns = [
    path("admin/", admin.site.urls),
    path("console/", include("adminconsole.urls")),
    # Staff single sign-on (404 unless OIDC is configured); the provider's redirect URI is /oidc/callback/.
    path("oidc/authenticate/", sso.StaffSSOLoginView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", sso.StaffSSOCallbackView.as_view(), name="oidc_authentication_callback"),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", llm_apis.metrics_view),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/admin/rollout-report/", console_rollout_apis.RolloutReportApi.as_view(), name="admin-rollout-report"),
    path("api/", include("tenants.urls")),
    path("api/", include("metering.urls")),
    path("api/quota-requests/", console_apis.QuotaRequestsApi.as_view(), name="quota-requests"),
    path("api/", include("llm.urls_tasks")),
    path("v1/", include("llm.urls")),
]

handler404 = "gateway_project.health.not_found"
handler500 = "gateway_project.health.server_error"
