from django.urls import path

from metering import apis

urlpatterns = [
    path("limits/", apis.LimitsApi.as_view(), name="limits"),
    path("quota/", apis.QuotaApi.as_view(), name="quota"),
    path("usage/", apis.UsageApi.as_view(), name="usage"),
    path("usage/logs/", apis.UsageLogsApi.as_view(), name="usage-logs"),
]
