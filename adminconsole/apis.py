"""Tenant-facing API of the console's workflows: tenant admins request higher limits.

`POST /api/quota-requests/` (key, task, wanted_value, reason) and `GET /api/quota-requests/` (the
caller's tenant's requests, newest first). Members get 403; the key and value are validated against
the policy key registry (400 with the registry's message).
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from adminconsole import services
from adminconsole.models import QuotaRequest
from gateway_project.pagination import PageNumberPagination, paginated
from tenants.permissions import IsTenantAdmin
from tenants.selectors import TenantContext


class QuotaRequestSerializer(serializers.ModelSerializer):
    task = serializers.CharField(source="task.code", default=None)
    requested_by = serializers.CharField(source="requested_by.username")
    decided_by = serializers.CharField(source="decided_by.username", default=None)

    class Meta:
        model = QuotaRequest
        fields = ["id", "key", "task", "wanted_value", "reason", "status", "requested_by", "created_at",
                  "decided_by", "decided_at", "note"]


class QuotaRequestsApi(APIView):
    permission_classes = [IsTenantAdmin]

    class InputSerializer(serializers.Serializer):
        key = serializers.CharField(max_length=64)
        task = serializers.CharField(max_length=32, required=False, allow_null=True, allow_blank=True)
        wanted_value = serializers.JSONField()
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    @extend_schema(parameters=[OpenApiParameter("page", int, description="Page number, from 1.")],
                   responses=paginated(QuotaRequestSerializer, "QuotaRequestPage"))
    def get(self, request: Request) -> Response:
        context: TenantContext = request.auth
        rows = (QuotaRequest.objects.filter(tenant_id=context.tenant_id)
                .select_related("task", "requested_by", "decided_by").order_by("-created_at", "-id"))
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(QuotaRequestSerializer(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: QuotaRequestSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        context: TenantContext = request.auth
        created = services.quota_request_create(
            user=context.user, key=data.validated_data["key"], task_code=data.validated_data.get("task") or None,
            wanted_value=data.validated_data["wanted_value"], reason=data.validated_data["reason"],
        )
        created = QuotaRequest.objects.select_related("task", "requested_by", "decided_by").get(pk=created.pk)
        return Response(QuotaRequestSerializer(created).data, status=status.HTTP_201_CREATED)
