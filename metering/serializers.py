"""Response shapes of the enforcement API (limits, quota, usage), declared so the OpenAPI schema has
bodies; schemathesis checks every answer against them (tests/test_openapi_schema.py)."""

from __future__ import annotations

from rest_framework import serializers


class LimitSerializer(serializers.Serializer):
    key = serializers.CharField()
    value = serializers.JSONField(help_text="An integer, a boolean, or a list of model class codes (by key).")
    unit = serializers.CharField(allow_blank=True)
    kind = serializers.CharField()
    applies_to_task = serializers.CharField(allow_null=True)
    source = serializers.CharField()


class LimitsSerializer(serializers.Serializer):
    limits = serializers.DictField(child=serializers.ListField(child=LimitSerializer()),
                                   help_text="Task code -> the limits in force for the caller.")


class QuotaMeterSerializer(serializers.Serializer):
    key = serializers.CharField()
    metric = serializers.CharField()
    window = serializers.CharField()
    task = serializers.CharField(allow_null=True)
    subject = serializers.CharField()
    limit = serializers.IntegerField()
    source = serializers.CharField()
    period_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(allow_null=True)
    used = serializers.IntegerField()
    reserved = serializers.IntegerField()
    remaining = serializers.IntegerField()
    percent = serializers.FloatField()


class QuotaSerializer(serializers.Serializer):
    meters = QuotaMeterSerializer(many=True)


class UsageRowSerializer(serializers.Serializer):
    """One group of the usage aggregate; the group's own field (task, user, day or model) comes too."""

    tokens_in = serializers.IntegerField()
    tokens_out = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    tokens_cached_in = serializers.IntegerField(help_text="Of tokens_in: read from the prompt cache.")
    tokens_cache_write = serializers.IntegerField(help_text="Of tokens_in: written to the prompt cache.")
    api_calls = serializers.IntegerField()
    cost_micro_usd = serializers.IntegerField()
    search_fees_micro_usd = serializers.IntegerField(
        help_text="Of cost_micro_usd: the priced outbound requests (prior-art search fees).")
    requests = serializers.IntegerField()
    refused = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    to = serializers.DateField()
    group_by = serializers.CharField()
    results = UsageRowSerializer(many=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        # `from` is a Python keyword: declared here rather than as a class attribute.
        return {"from": serializers.DateField(), **super().get_fields()}
