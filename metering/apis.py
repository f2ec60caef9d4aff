"""Caller-facing views of enforcement: effective limits, quota status, usage and ledger rows."""

from __future__ import annotations

from datetime import date, timedelta

from django.utils import timezone
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metering import selectors
from metering.models import UsageLog


class LimitsApi(APIView):
    def get(self, request: Request) -> Response:
        return Response({"limits": selectors.limits_for_caller(context=request.auth, now=timezone.now())})


class QuotaApi(APIView):
    def get(self, request: Request) -> Response:
        return Response({"meters": selectors.quota_for_caller(context=request.auth, now=timezone.now())})


class UsageApi(APIView):
    class FilterSerializer(serializers.Serializer):
        # `from` is a Python keyword, so the serializer maps it by source.
        from_ = serializers.DateField(required=False)
        to = serializers.DateField(required=False)
        group_by = serializers.ChoiceField(choices=list(selectors.GROUPS), default="task")

        def validate(self, attrs):
            if attrs.get("from_") and attrs.get("to") and attrs["from_"] > attrs["to"]:
                raise serializers.ValidationError("'from' must not be after 'to'.")
            return attrs

    def get(self, request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items()}
        if "from" in params:
            params["from_"] = params.pop("from")
        data = self.FilterSerializer(data=params)
        data.is_valid(raise_exception=True)
        today = timezone.now().date()
        end: date = data.validated_data.get("to") or today
        start: date = data.validated_data.get("from_") or end - timedelta(days=30)
        rows = selectors.usage_aggregate(context=request.auth, start=start, end=end,
                                         group_by=data.validated_data["group_by"])
        return Response({"from": start, "to": end, "group_by": data.validated_data["group_by"], "results": rows})


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
    def get(self, request: Request) -> Response:
        from rest_framework.pagination import PageNumberPagination

        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.usage_logs_page(context=request.auth), request, view=self)
        return paginator.get_paginated_response(UsageLogSerializer(page, many=True).data)
