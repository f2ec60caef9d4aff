"""Caller-facing views of enforcement: effective limits, quota status, usage and ledger rows."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.pagination import PageNumberPagination
from gateway_project.pagination import paginated
from metering import selectors
from metering import serializers as shapes
from metering.models import UsageLog


class LimitsApi(APIView):
    @extend_schema(responses=shapes.LimitsSerializer)
    def get(self, request: Request) -> Response:
        return Response({"limits": selectors.limits_for_caller(context=request.auth, now=timezone.now())})


class QuotaApi(APIView):
    @extend_schema(responses=shapes.QuotaSerializer)
    def get(self, request: Request) -> Response:
        return Response({"meters": selectors.quota_for_caller(context=request.auth, now=timezone.now())})


class UsageFilterSerializer(serializers.Serializer):
    def get_fields(self) -> dict[str, serializers.Field]:
        # `from` is a Python keyword: declared here rather than as a class attribute.
        return {
            "from": serializers.DateField(required=False, help_text="First day (UTC), inclusive; default: 'to' - 30."),
            "to": serializers.DateField(required=False, help_text="Last day (UTC), inclusive; default today."),
            "group_by": serializers.ChoiceField(choices=list(selectors.GROUPS), default="task"),
        }

    def validate(self, attrs: dict) -> dict:
        try:
            attrs["from"], attrs["to"] = selectors.usage_range(start=attrs.get("from"), end=attrs.get("to"),
                                                               today=timezone.now().date())
        except selectors.UsageRangeError as error:
            raise serializers.ValidationError({error.field: [str(error)]}) from None
        return attrs


class UsageApi(APIView):
    @extend_schema(parameters=[UsageFilterSerializer], responses=shapes.UsageSerializer)
    def get(self, request: Request) -> Response:
        data = UsageFilterSerializer(data=request.query_params.dict())
        data.is_valid(raise_exception=True)
        start, end, group_by = data.validated_data["from"], data.validated_data["to"], data.validated_data["group_by"]
        rows = selectors.usage_aggregate(context=request.auth, start=start, end=end, group_by=group_by)
        return Response({"from": start, "to": end, "group_by": group_by, "results": rows})


class UsageLogSerializer(serializers.ModelSerializer):
    task = serializers.CharField(source="task.code")
    user = serializers.CharField(source="user.username", default=None)
    attempts = serializers.SerializerMethodField()

    class Meta:
        model = UsageLog
        fields = ["request_id", "task", "user", "feature_code", "provider", "model_name", "model_class", "tokens_in",
                  "tokens_out", "api_calls", "cost_micro_usd", "latency_ms", "status", "error_code",
                  "enforcement_mode", "would_refuse_code", "usage_estimated", "settled_late", "max_tokens_fitted",
                  "attempts", "admitted_at", "created_at"]

    def get_attempts(self, log: UsageLog) -> list[dict]:
        # The provider's own text (even scrubbed) is for operators: it can name internal hosts.
        return [{k: v for k, v in attempt.items() if k != "detail"} for attempt in log.attempts or []]


class UsageLogsApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("page", int, description="Page number, from 1.")],
                   responses=paginated(UsageLogSerializer, "UsageLogPage"))
    def get(self, request: Request) -> Response:
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.usage_logs_page(context=request.auth), request, view=self)
        return paginator.get_paginated_response(UsageLogSerializer(page, many=True).data)
