"""Super-admin API of the rollout report: `GET /api/admin/rollout-report/?tenant=&from=&to=`.

Staff only, over the staff console's session (the same sign-in rules as /console/: two-factor for
password logins, SSO). Tenants' users, whose bearer tokens authenticate them to every other /api/
endpoint, get 403 here.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from adminconsole.otp import staff_session_ok
from gateway_project.errors import NotFound
from metering.rollout import rollout_report
from metering.selectors import UsageRangeError, usage_range
from tenants.authentication import TenantJWTAuthentication
from tenants.models import Tenant


class IsStaffSession(BasePermission):
    message = "Only the gateway's staff may read the rollout report."

    def has_permission(self, request: Request, view) -> bool:
        # request.auth is a TenantContext for a tenant's bearer token: never staff here.
        return request.auth is None and request.user is not None and staff_session_ok(request._request)


class RolloutFilterSerializer(serializers.Serializer):
    def get_fields(self) -> dict[str, serializers.Field]:
        return {  # `from` is a Python keyword
            "tenant": serializers.SlugField(required=False, help_text="One tenant's slug; default: every tenant."),
            "from": serializers.DateField(required=False, help_text="First day (UTC), inclusive; default: 'to' - 30."),
            "to": serializers.DateField(required=False, help_text="Last day (UTC), inclusive; default today."),
        }

    def validate(self, attrs: dict) -> dict:
        try:
            attrs["from"], attrs["to"] = usage_range(start=attrs.get("from"), end=attrs.get("to"),
                                                     today=timezone.now().date())
        except UsageRangeError as error:
            raise serializers.ValidationError({error.field: [str(error)]}) from None
        return attrs


class _Amounts(serializers.Serializer):
    calls = serializers.IntegerField(help_text="Calls SHADOW/SOFT let through that HARD would have refused.")
    tokens_in = serializers.IntegerField()
    tokens_out = serializers.IntegerField()
    tokens = serializers.IntegerField()
    api_calls = serializers.IntegerField()
    cost_micro_usd = serializers.IntegerField()
    cost_usd = serializers.CharField()


class _ByCode(_Amounts):
    code = serializers.CharField()


class _ByRule(_Amounts):
    code = serializers.CharField()
    rule_id = serializers.IntegerField(help_text="The PolicyRule that would have refused.")
    policy_key = serializers.CharField()
    rule = serializers.CharField()


class _ByDay(_Amounts):
    day = serializers.DateField()


class _ByTask(_Amounts):
    task = serializers.CharField()


class _Breakdowns(_Amounts):
    by_code = _ByCode(many=True)
    by_rule = _ByRule(many=True)
    by_day = _ByDay(many=True)
    by_task = _ByTask(many=True)


class _Switch(serializers.Serializer):
    calls = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost_micro_usd = serializers.IntegerField()
    cost_usd = serializers.CharField()
    summary = serializers.CharField()


class _TenantPart(_Breakdowns):
    tenant = serializers.CharField()
    name = serializers.CharField()
    enforcement_mode = serializers.CharField(help_text='The tenant\'s own mode; "" = inherits the global one.')
    effective_mode = serializers.CharField()
    switch_to_hard = _Switch()


class _Total(_Breakdowns):
    summary = serializers.CharField()


class RolloutReportSerializer(serializers.Serializer):
    tenant = serializers.CharField(allow_null=True)
    total = _Total()
    tenants = _TenantPart(many=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"], fields["to"] = serializers.DateField(), serializers.DateField()
        return fields


class RolloutReportApi(APIView):
    authentication_classes = [SessionAuthentication, TenantJWTAuthentication]
    permission_classes = [IsStaffSession]

    @extend_schema(operation_id="admin_rollout_report", parameters=[RolloutFilterSerializer],
                   responses=RolloutReportSerializer)
    def get(self, request: Request) -> Response:
        data = RolloutFilterSerializer(data=request.query_params.dict())
        data.is_valid(raise_exception=True)
        tenant = None
        if slug := data.validated_data.get("tenant"):
            tenant = Tenant.objects.filter(slug=slug).first()
            if tenant is None:
                raise NotFound(f"No tenant with slug '{slug}'.", code="tenant_unknown")
        report = rollout_report(tenant=tenant, day_from=data.validated_data["from"],
                                day_to=data.validated_data["to"])
        return Response(RolloutReportSerializer(report).data)
