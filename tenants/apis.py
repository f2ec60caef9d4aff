"""Identity API: signup, tokens, me, and tenant user management."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken

from gateway_project.errors import AuthenticationFailed, Forbidden, NotFound
from tenants import services
from tenants.models import User
from tenants.permissions import IsTenantAdmin
from tenants.selectors import TenantContext, tenant_user_get, tenant_users_list
from tenants.throttling import auth_attempt_register, client_address
from tenants.tokens import tokens_for_user


class SignupApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        ati_token = serializers.CharField(max_length=200)
        tenant_name = serializers.CharField(max_length=200)
        username = serializers.CharField(max_length=150)
        email = serializers.EmailField()
        password = serializers.CharField(max_length=128, write_only=True)

    @extend_schema(request=InputSerializer)
    def post(self, request: Request) -> Response:
        auth_attempt_register(action="signup", subjects={"address": client_address(request)})
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant, user = services.tenant_signup(
            ati_secret=data.validated_data["ati_token"],
            tenant_name=data.validated_data["tenant_name"],
            username=data.validated_data["username"],
            email=data.validated_data["email"],
            password=data.validated_data["password"],
        )
        body = {
            "tenant": {"id": tenant.pk, "name": tenant.name, "slug": tenant.slug, "plan": tenant.plan_code},
            "user": {"id": user.pk, "username": user.username, "role": user.role},
            **tokens_for_user(user),
        }
        return Response(body, status=status.HTTP_201_CREATED)


class TokenObtainApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=128, write_only=True)

    @extend_schema(request=InputSerializer)
    def post(self, request: Request) -> Response:
        username = str(request.data.get("username", ""))[:150] if hasattr(request.data, "get") else ""
        auth_attempt_register(action="login", subjects={"username": username, "address": client_address(request)})
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(
            request._request, username=data.validated_data["username"], password=data.validated_data["password"]
        )
        if user is None:
            raise AuthenticationFailed("Wrong username or password.", code="invalid_credentials")
        if user.tenant_id is None:
            raise Forbidden("Super admins use the admin console, not API tokens.", code="no_tenant")
        return Response(tokens_for_user(user))


class TokenRefreshApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        refresh = serializers.CharField()

    @extend_schema(request=InputSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            refresh = RefreshToken(data.validated_data["refresh"])
        except TokenError:
            raise AuthenticationFailed("The refresh token is invalid or expired.", code="token_not_valid") from None
        # Refreshing re-checks the whole chain: a revoked token or suspended tenant gets no new access.
        from tenants.authentication import context_from_token

        context_from_token(refresh)
        return Response({"access": str(refresh.access_token)})


def _user_payload(user: User) -> dict:
    return {
        "id": user.pk,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "is_active": user.is_active,
        "date_joined": user.date_joined,
    }


class MeApi(APIView):
    def get(self, request: Request) -> Response:
        context: TenantContext = request.auth
        return Response(
            {
                "user": _user_payload(context.user),
                "tenant": {"id": context.tenant_id, "name": context.tenant_name, "slug": context.tenant_slug},
                "plan": context.plan_code,
                "ati_id": context.ati_id,
                "role": context.role,
            }
        )


class TenantUserListApi(APIView):
    permission_classes = [IsTenantAdmin]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        email = serializers.EmailField()
        password = serializers.CharField(max_length=128, write_only=True)
        role = serializers.ChoiceField(choices=User.Role.values, default=User.Role.MEMBER)

    def get(self, request: Request) -> Response:
        return Response({"results": [_user_payload(u) for u in tenant_users_list(tenant_id=request.auth.tenant_id)]})

    @extend_schema(request=InputSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_create(tenant=request.auth.user.tenant, **data.validated_data)
        return Response(_user_payload(user), status=status.HTTP_201_CREATED)


class TenantUserDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    class UpdateSerializer(serializers.Serializer):
        email = serializers.EmailField(required=False)
        role = serializers.ChoiceField(choices=User.Role.values, required=False)
        is_active = serializers.BooleanField(required=False)
        password = serializers.CharField(max_length=128, write_only=True, required=False)

    def _get(self, request: Request, user_id: int) -> User:
        user = tenant_user_get(tenant_id=request.auth.tenant_id, user_id=user_id)
        if user is None:  # another tenant's user is indistinguishable from no user
            raise NotFound("No such user.", code="user_not_found")
        return user

    def get(self, request: Request, user_id: int) -> Response:
        return Response(_user_payload(self._get(request, user_id)))

    @extend_schema(request=UpdateSerializer)
    def patch(self, request: Request, user_id: int) -> Response:
        user = self._get(request, user_id)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update(user=user, actor=request.auth.user, **data.validated_data)
        return Response(_user_payload(user))

    def delete(self, request: Request, user_id: int) -> Response:
        services.user_deactivate(user=self._get(request, user_id), actor=request.auth.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
