"""API keys of the caller's tenant: create (the key is in the answer, once), list, rotate, revoke.
Tenant admins only; another tenant's key is a 404."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.errors import BadRequest, NotFound
from tenants import services
from tenants.audit import AuditSource
from tenants.models import ApiKey, User
from tenants.permissions import IsTenantAdmin
from tenants.selectors import api_key_get, api_keys_list


class ApiKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's public part: how it shows in logs and the ledger.")
    kind = serializers.SerializerMethodField()
    user = serializers.SerializerMethodField(help_text="The user a user key acts as; null for a service key.")
    allowed_tasks = serializers.ListField(child=serializers.CharField())
    allowed_model_classes = serializers.ListField(child=serializers.CharField())
    limits = serializers.DictField(help_text="The key's own budget, e.g. {\"key_tokens_per_day\": 100000}.")
    status = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    created_by = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_kind(self, key: ApiKey) -> str:
        return "service" if key.is_service else "user"

    def get_user(self, key: ApiKey) -> str | None:
        return key.user.username if key.user_id else None

    def get_created_by(self, key: ApiKey) -> str | None:
        return key.created_by.username if key.created_by_id else None


class IssuedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="The secret key. Shown once: store it now.")


class ApiKeyListSerializer(serializers.Serializer):
    results = ApiKeySerializer(many=True)


def _issued(issued: services.IssuedApiKey) -> dict:
    return {**ApiKeySerializer(issued.api_key).data, "key": issued.secret}


class ApiKeyListApi(APIView):
    permission_classes = [IsTenantAdmin]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        user = serializers.CharField(max_length=150, required=False, allow_null=True,
                                     help_text="Username of the tenant's user the key acts as; omit for a service key.")
        allowed_tasks = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                              max_length=100)
        allowed_model_classes = serializers.ListField(child=serializers.CharField(max_length=32), required=False,
                                                      max_length=100)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        limits = serializers.DictField(
            required=False, help_text="The key's own budget: key_tokens_per_day, key_tokens_per_month, "
                                      "key_cost_per_day_usd, key_cost_per_month_usd (USD as a string).")

    @extend_schema(responses=ApiKeyListSerializer)
    def get(self, request: Request) -> Response:
        return Response({"results": ApiKeySerializer(api_keys_list(tenant_id=request.auth.tenant_id), many=True).data})

    @extend_schema(request=InputSerializer, responses={201: IssuedApiKeySerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = None
        if values.get("user"):
            user = User.objects.filter(tenant_id=request.auth.tenant_id, username=values["user"]).first()
            if user is None:  # another tenant's user is no user of this one
                raise BadRequest(f"No user '{values['user']}' in this tenant.", code="invalid_api_key")
        issued = services.api_key_create(
            tenant=request.auth.user.tenant, name=values["name"], user=user,
            allowed_tasks=values.get("allowed_tasks"), allowed_model_classes=values.get("allowed_model_classes"),
            expires_at=values.get("expires_at"), limits=values.get("limits"), actor=request.auth.user,
            source=AuditSource.API,
        )
        return Response(_issued(issued), status=status.HTTP_201_CREATED)


def _key_or_404(request: Request, key_id: int) -> ApiKey:
    key = api_key_get(tenant_id=request.auth.tenant_id, key_id=key_id)
    if key is None:  # another tenant's key is indistinguishable from no key
        raise NotFound("No such API key.", code="api_key_not_found")
    return key


class ApiKeyDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(responses=ApiKeySerializer)
    def get(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeySerializer(_key_or_404(request, key_id)).data)

    class UpdateSerializer(serializers.Serializer):
        limits = serializers.DictField(help_text="Replaces the key's own budget ({} removes it).")

    @extend_schema(request=UpdateSerializer, responses=ApiKeySerializer)
    def patch(self, request: Request, key_id: int) -> Response:
        key = _key_or_404(request, key_id)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = services.api_key_limits_set(api_key=key, limits=data.validated_data["limits"], actor=request.auth.user,
                                          source=AuditSource.API)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, key_id: int) -> Response:
        services.api_key_revoke(api_key=_key_or_404(request, key_id), actor=request.auth.user, source=AuditSource.API)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyRotateApi(APIView):
    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses=IssuedApiKeySerializer)
    def post(self, request: Request, key_id: int) -> Response:
        issued = services.api_key_rotate(api_key=_key_or_404(request, key_id), actor=request.auth.user,
                                         source=AuditSource.API)
        return Response(_issued(issued))
