from django.urls import path

from metering import apis
from metering.alerts import apis as apis_alerts

urlpatterns = [
    path("limits/", apis.LimitsApi.as_view(), name="limits"),
    path("quota/", apis.QuotaApi.as_view(), name="quota"),
    path("usage/", apis.UsageApi.as_view(), name="usage"),
    path("usage/logs/", apis.UsageLogsApi.as_view(), name="usage-logs"),
    path("usage/export.csv", apis.UsageExportApi.as_view(), name="usage-export"),
    path("notifications/", apis_alerts.NotificationListApi.as_view(), name="notifications"),
    path("notifications/read-all/", apis_alerts.NotificationReadAllApi.as_view(), name="notifications-read-all"),
    path("notifications/<int:notification_id>/read/", apis_alerts.NotificationReadApi.as_view(),
         name="notification-read"),
    path("alert-channels/", apis_alerts.AlertChannelListApi.as_view(), name="alert-channels"),
    path("alert-channels/<int:channel_id>/", apis_alerts.AlertChannelDetailApi.as_view(), name="alert-channel-detail"),
    path("alert-channels/<int:channel_id>/rotate-secret/", apis_alerts.AlertChannelRotateSecretApi.as_view(),
         name="alert-channel-rotate-secret"),
    path("alert-channels/<int:channel_id>/deliveries/", apis_alerts.AlertChannelDeliveriesApi.as_view(),
         name="alert-channel-deliveries"),
]
