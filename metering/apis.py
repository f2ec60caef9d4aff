"""Caller-facing views of enforcement: effective limits, quota status, usage and ledger rows."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import negotiation, renderers, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.pagination import PageNumberPagination, paginated
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
    api_key = serializers.CharField(source="api_key.prefix", default=None,
                                    help_text="The API key the call was made with (its public prefix); null: a JWT.")
    attempts = serializers.SerializerMethodField()

    class Meta:
        model = UsageLog
        fields = ["request_id", "task", "user", "feature_code", "provider", "model_name", "model_class", "tokens_in",
                  "tokens_out", "tokens_cached_in", "tokens_cache_write", "api_calls", "cost_micro_usd",
                  "search_fees_micro_usd", "latency_ms", "status", "error_code",
                  "enforcement_mode", "would_refuse_code", "would_refuse", "usage_estimated", "settled_late", "max_tokens_fitted",
                  "attempts", "api_key", "admitted_at", "created_at"]

    def get_attempts(self, log: UsageLog) -> list[dict]:
        # The provider's own text (even scrubbed) is for operators: it can name internal hosts.
        return [{k: v for k, v in attempt.items() if k != "detail"} for attempt in log.attempts or []]


class UsageLogFilterSerializer(serializers.Serializer):
    """Filters of the ledger view and its CSV export (all optional; they combine with AND)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "from": serializers.DateField(required=False, help_text="First day (UTC), inclusive."),
            "to": serializers.DateField(required=False, help_text="Last day (UTC), inclusive."),
            "user": serializers.CharField(required=False, max_length=150, help_text="Username (members: their own)."),
            "task": serializers.CharField(required=False, max_length=64, help_text="Task code, e.g. LLM2_DRAFT."),
            "status": serializers.ChoiceField(choices=list(selectors.USAGE_LOG_STATUSES), required=False),
            "model": serializers.CharField(required=False, max_length=128, help_text="Provider model name."),
            "key": serializers.CharField(required=False, max_length=64,
                                         help_text="API key: its id or its public prefix (gw_live_...)."),
        }

    def validate(self, attrs: dict) -> dict:
        bounded = self.context.get("bounded", False)
        if bounded or "from" in attrs or "to" in attrs:
            try:
                attrs["from"], attrs["to"] = selectors.usage_range(
                    start=attrs.get("from"), end=attrs.get("to"), today=timezone.now().date())
            except selectors.UsageRangeError as error:
                raise serializers.ValidationError({error.field: [str(error)]}) from None
        return attrs


def _filtered_logs(request: Request, *, bounded: bool) -> tuple[dict, Any]:
    data = UsageLogFilterSerializer(data=request.query_params.dict(), context={"bounded": bounded})
    data.is_valid(raise_exception=True)
    f = data.validated_data
    rows = selectors.usage_logs_filtered(
        context=request.auth, start=f.get("from"), end=f.get("to"), user=f.get("user", ""), task=f.get("task", ""),
        status=f.get("status", ""), model=f.get("model", ""), api_key=f.get("key", ""))
    return f, rows


class UsageLogsApi(APIView):
    @extend_schema(parameters=[UsageLogFilterSerializer,
                               OpenApiParameter("page", int, description="Page number, from 1.")],
                   responses=paginated(UsageLogSerializer, "UsageLogPage"))
    def get(self, request: Request) -> Response:
        _, rows = _filtered_logs(request, bounded=False)
        paginator = PageNumberPagination()
        rows = rows.select_related("task", "user", "api_key").order_by("-admitted_at", "-id")
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(UsageLogSerializer(page, many=True).data)


class _Echo:
    def write(self, value: str) -> str:
        return value


class _JsonErrorsOnly(negotiation.BaseContentNegotiation):
    """The export's body is CSV whatever the client asks for (Accept: text/csv included, which DRF's
    negotiation would refuse with a 406); only an error goes through a renderer, and errors are JSON."""

    def select_renderer(self, request: Request, renderers_: list, format_suffix: str | None = None) -> tuple:
        return renderers_[0], renderers_[0].media_type

    def select_parser(self, request: Request, parsers: list) -> Any:
        return parsers[0] if parsers else None


class UsageExportApi(APIView):
    """The caller's ledger rows as CSV, streamed oldest first: the same filters as /api/usage/logs/,
    always over a bounded day range (default the last 30 days, at most USAGE_MAX_DAYS)."""

    renderer_classes = [renderers.JSONRenderer]
    content_negotiation_class = _JsonErrorsOnly

    @extend_schema(parameters=[UsageLogFilterSerializer],
                   responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request) -> StreamingHttpResponse:
        f, rows = _filtered_logs(request, bounded=True)
        writer = csv.writer(_Echo())
        header = selectors.usage_logs_export_columns()

        def lines() -> Iterator[str]:
            yield writer.writerow(header)
            for record in selectors.usage_logs_export_rows(rows):
                yield writer.writerow(record)

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="usage_{f["from"]}_{f["to"]}.csv"'
        return response
