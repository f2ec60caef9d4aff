"""Notifications (any tenant user, their own) and alert channels with their delivery log (tenant admins).

GET  /api/notifications/[?unread=1]        the caller's notifications, newest first, paginated
POST /api/notifications/{id}/read/         mark one read
POST /api/notifications/read-all/          mark all read
GET  /api/alert-channels/                  POST creates (a webhook's signing secret is returned once)
GET  /api/alert-channels/{id}/             PATCH name/target/is_active, DELETE
POST /api/alert-channels/{id}/rotate-secret/   a new webhook secret, returned once
GET  /api/alert-channels/{id}/deliveries/  the delivery log, paginated
"""

from __future__ import annotations

from urllib.parse import urlsplit

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.errors import NotFound
from gateway_project.pagination import PageNumberPagination, paginated
from metering.alerts import selectors, services
from metering.alerts.models import AlertChannel, AlertDelivery, Notification
from tenants.audit import AuditSource
from tenants.permissions import IsTenantAdmin

TRUE_VALUES = {"1", "true", "yes", "on"}
PAGE = OpenApiParameter("page", int, description="Page number, from 1.")


class NotificationSerializer(serializers.ModelSerializer):
    alert = serializers.PrimaryKeyRelatedField(read_only=True)
    is_read = serializers.SerializerMethodField()

    class Meta:
        model = Notification
        fields = ["id", "kind", "title", "body", "alert", "created_at", "read_at", "is_read"]

    def get_is_read(self, obj: Notification) -> bool:
        return obj.read_at is not None


class AlertChannelSerializer(serializers.Serializer):
    """The shape `channel_payload` answers (a response shape only: the OpenAPI schema's body)."""

    id = serializers.IntegerField()
    kind = serializers.CharField()
    name = serializers.CharField()
    target = serializers.CharField(allow_blank=True)
    is_active = serializers.BooleanField()
    consecutive_failures = serializers.IntegerField()
    disabled_reason = serializers.CharField(allow_blank=True)
    disabled_at = serializers.DateTimeField(allow_null=True)
    has_secret = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    secret = serializers.CharField(required=False, help_text="Only when created or rotated: shown once.")


class AlertChannelListSerializer(serializers.Serializer):
    results = AlertChannelSerializer(many=True)


class MarkedReadSerializer(serializers.Serializer):
    marked_read = serializers.IntegerField()


class NotificationListApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("unread", bool, description="Only unread notifications."), PAGE],
                   responses=paginated(NotificationSerializer, "NotificationPage"))
    def get(self, request: Request) -> Response:
        unread = request.query_params.get("unread", "").lower() in TRUE_VALUES
        rows = selectors.notifications_for_user(user_id=request.auth.user_id, tenant_id=request.auth.tenant_id,
                                                unread_only=unread)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(NotificationSerializer(page, many=True).data)


class NotificationReadApi(APIView):
    @extend_schema(request=None, responses=NotificationSerializer)
    def post(self, request: Request, notification_id: int) -> Response:
        notification = services.notification_mark_read(user_id=request.auth.user_id,
                                                       tenant_id=request.auth.tenant_id,
                                                       notification_id=notification_id)
        return Response(NotificationSerializer(notification).data)


class NotificationReadAllApi(APIView):
    @extend_schema(request=None, responses=MarkedReadSerializer)
    def post(self, request: Request) -> Response:
        count = services.notifications_mark_all_read(user_id=request.auth.user_id, tenant_id=request.auth.tenant_id)
        return Response({"marked_read": count})


def _masked(target: str) -> str:
    # Slack and Teams webhook URLs are bearer credentials: shown in full only once, at creation.
    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.netloc}/…{target[-4:]}" if parts.path.strip("/") else target


def channel_payload(channel: AlertChannel, *, secret: str | None = None, full_target: bool = False) -> dict:
    target = channel.target
    if not full_target and channel.kind in (AlertChannel.Kind.SLACK, AlertChannel.Kind.TEAMS) and target:
        target = _masked(target)
    body = {
        "id": channel.pk, "kind": channel.kind, "name": channel.name, "target": target,
        "is_active": channel.is_active, "consecutive_failures": channel.consecutive_failures,
        "disabled_reason": channel.disabled_reason, "disabled_at": channel.disabled_at,
        "has_secret": bool(channel.secret_encrypted), "created_at": channel.created_at,
        "updated_at": channel.updated_at,
    }
    if secret is not None:
        body["secret"] = secret  # once: it is stored encrypted and never returned again
    return body


class AlertChannelListApi(APIView):
    permission_classes = [IsTenantAdmin]

    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=AlertChannel.Kind.values)
        name = serializers.CharField(max_length=100)
        target = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    @extend_schema(responses=AlertChannelListSerializer)
    def get(self, request: Request) -> Response:
        channels = selectors.alert_channels_for_tenant(tenant_id=request.auth.tenant_id)
        return Response({"results": [channel_payload(c) for c in channels]})

    @extend_schema(request=InputSerializer, responses={201: AlertChannelSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        channel, secret = services.alert_channel_create(tenant_id=request.auth.tenant_id, actor=request.auth.user,
                                                        source=AuditSource.API, **data.validated_data)
        return Response(channel_payload(channel, secret=secret, full_target=True), status=status.HTTP_201_CREATED)


def _channel(request: Request, channel_id: int) -> AlertChannel:
    channel = selectors.alert_channel_get(tenant_id=request.auth.tenant_id, channel_id=channel_id)
    if channel is None:
        raise NotFound("No such alert channel.", code="alert_channel_not_found")
    return channel


class AlertChannelDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    class UpdateSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False)
        target = serializers.CharField(max_length=2000, required=False, allow_blank=True)
        is_active = serializers.BooleanField(required=False)

    @extend_schema(responses=AlertChannelSerializer)
    def get(self, request: Request, channel_id: int) -> Response:
        return Response(channel_payload(_channel(request, channel_id)))

    @extend_schema(request=UpdateSerializer, responses=AlertChannelSerializer)
    def patch(self, request: Request, channel_id: int) -> Response:
        channel = _channel(request, channel_id)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        channel = services.alert_channel_update(channel=channel, actor=request.auth.user, source=AuditSource.API,
                                                **data.validated_data)
        return Response(channel_payload(channel))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, channel_id: int) -> Response:
        services.alert_channel_delete(channel=_channel(request, channel_id), actor=request.auth.user,
                                      source=AuditSource.API)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AlertChannelRotateSecretApi(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses=AlertChannelSerializer)
    def post(self, request: Request, channel_id: int) -> Response:
        channel = _channel(request, channel_id)
        secret = services.alert_channel_secret_rotate(channel=channel, actor=request.auth.user, source=AuditSource.API)
        return Response(channel_payload(channel, secret=secret))


class AlertDeliverySerializer(serializers.ModelSerializer):
    alert_kind = serializers.CharField(source="alert.kind")
    policy_key = serializers.CharField(source="alert.policy_key")

    class Meta:
        model = AlertDelivery
        fields = ["id", "alert", "alert_kind", "policy_key", "kind", "status", "attempts", "last_error",
                  "response_status", "next_attempt_at", "sent_at", "created_at", "updated_at"]


class AlertChannelDeliveriesApi(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(parameters=[PAGE], responses=paginated(AlertDeliverySerializer, "AlertDeliveryPage"))
    def get(self, request: Request, channel_id: int) -> Response:
        channel = _channel(request, channel_id)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.alert_deliveries_for_channel(channel_id=channel.pk), request,
                                           view=self)
        return paginator.get_paginated_response(AlertDeliverySerializer(page, many=True).data)
