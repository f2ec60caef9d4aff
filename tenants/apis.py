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

from gateway_project.errors import AuthenticationFailed, BadRequest, Forbidden, NotFound
from tenants import serializers as shapes
from tenants import services
from tenants.audit import AuditSource
from tenants.authentication import context_from_token
from tenants.models import PERSON_ROLES, User
from tenants.permissions import IsTenantAdmin
from tenants.selectors import TenantContext, identity_resolve, tenant_user_get, tenant_users_list, username_exists
from tenants.throttling import (
    client_address,
    login_failure_record,
    login_failures_clear,
    login_lockout_check,
    signup_failure_record,
    signup_lockout_check,
)
from tenants.tokens import tokens_for_user

# Signup failures that are guesses at an ATI secret (and so count towards the address's lockout).
ATI_SECRET_FAILURES = frozenset({"ati_token_unknown", "ati_token_used", "ati_token_revoked", "ati_token_expired"})


class SignupApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        ati_token = serializers.CharField(max_length=200)
        tenant_name = serializers.CharField(max_length=200)
        username = serializers.CharField(max_length=150)
        email = serializers.EmailField()
        password = serializers.CharField(max_length=128, write_only=True)

    @extend_schema(request=InputSerializer, responses={201: shapes.SignupResultSerializer})
    def post(self, request: Request) -> Response:
        address = client_address(request)
        signup_lockout_check(address=address)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            tenant, user = services.tenant_signup(
                ati_secret=data.validated_data["ati_token"],
                tenant_name=data.validated_data["tenant_name"],
                username=data.validated_data["username"],
                email=data.validated_data["email"],
                password=data.validated_data["password"],
            )
        except BadRequest as exc:
            if exc.code in ATI_SECRET_FAILURES:
                signup_failure_record(address=address)
            raise
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

    @extend_schema(request=InputSerializer, responses=shapes.TokenPairSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        username = data.validated_data["username"]
        login_lockout_check(username=username)
        user = authenticate(request._request, username=username, password=data.validated_data["password"])
        if user is None:
            login_failure_record(
                username=username, address=client_address(request), username_exists=username_exists(username=username)
            )
            raise AuthenticationFailed("Wrong username or password.", code="invalid_credentials")
        login_failures_clear(username=username)
        if user.tenant_id is None:
            raise Forbidden("Super admins use the admin console, not API tokens.", code="no_tenant")
        # The whole chain is checked now, not only when the token is first used: no tokens for a
        # suspended tenant or a revoked / expired ATI token (same codes as at use). It warms the cache too.
        identity_resolve(user_id=user.pk, tenant_id=user.tenant_id, ati_id=user.tenant.signup_ati_token_id)
        return Response(tokens_for_user(user))


class TokenRefreshApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        refresh = serializers.CharField()

    @extend_schema(request=InputSerializer, responses=shapes.AccessTokenSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            refresh = RefreshToken(data.validated_data["refresh"])
        except TokenError:
            raise AuthenticationFailed("The refresh token is invalid or expired.", code="token_not_valid") from None
        # Refreshing re-checks the whole chain and the session version: a revoked ATI token, a
        # suspended tenant or an ended session gets no new access.
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
    @extend_schema(responses=shapes.MeSerializer)
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


class MePasswordApi(APIView):
    """Change your own password. Every session ends, this one's too; the answer carries a fresh pair."""

    class InputSerializer(serializers.Serializer):
        current_password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
        new_password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)

    @extend_schema(request=InputSerializer, responses=shapes.TokenPairSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = request.auth.user
        # A stolen access token must not become a way around the sign-in lockout.
        login_lockout_check(username=user.username)
        try:
            user = services.user_password_change(
                user=user, current_password=data.validated_data["current_password"],
                new_password=data.validated_data["new_password"],
            )
        except BadRequest as exc:
            if exc.code == "wrong_password":
                login_failure_record(username=user.username, address=client_address(request), username_exists=True)
            raise
        login_failures_clear(username=user.username)
        return Response(tokens_for_user(user))


class MeSessionsRevokeApi(APIView):
    """Sign out everywhere: every token of the caller, this one included, stops working."""

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        services.user_sessions_revoke(user=request.auth.user, actor=request.auth.user, source=AuditSource.API)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantUserListApi(APIView):
    permission_classes = [IsTenantAdmin]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        email = serializers.EmailField()
        password = serializers.CharField(max_length=128, write_only=True)
        role = serializers.ChoiceField(choices=PERSON_ROLES, default=User.Role.MEMBER)

    @extend_schema(responses=shapes.UserListSerializer)
    def get(self, request: Request) -> Response:
        return Response({"results": [_user_payload(u) for u in tenant_users_list(tenant_id=request.auth.tenant_id)]})

    @extend_schema(request=InputSerializer, responses={201: shapes.UserSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_create(tenant=request.auth.user.tenant, actor=request.auth.user, source=AuditSource.API,
                                    **data.validated_data)
        return Response(_user_payload(user), status=status.HTTP_201_CREATED)


class TenantUserDetailApi(APIView):
    permission_classes = [IsTenantAdmin]

    class UpdateSerializer(serializers.Serializer):
        email = serializers.EmailField(required=False)
        role = serializers.ChoiceField(choices=PERSON_ROLES, required=False)
        is_active = serializers.BooleanField(required=False)
        password = serializers.CharField(max_length=128, write_only=True, required=False)

    def _get(self, request: Request, user_id: int) -> User:
        user = tenant_user_get(tenant_id=request.auth.tenant_id, user_id=user_id)
        if user is None:  # another tenant's user is indistinguishable from no user
            raise NotFound("No such user.", code="user_not_found")
        return user

    @extend_schema(responses=shapes.UserSerializer)
    def get(self, request: Request, user_id: int) -> Response:
        return Response(_user_payload(self._get(request, user_id)))

    @extend_schema(request=UpdateSerializer, responses=shapes.UserSerializer)
    def patch(self, request: Request, user_id: int) -> Response:
        user = self._get(request, user_id)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update(user=user, actor=request.auth.user, source=AuditSource.API,
                                    **data.validated_data)
        return Response(_user_payload(user))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, user_id: int) -> Response:
        services.user_deactivate(user=self._get(request, user_id), actor=request.auth.user, source=AuditSource.API)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantUserSessionsRevokeApi(APIView):
    """A tenant admin signs one of the tenant's users out everywhere."""

    permission_classes = [IsTenantAdmin]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, user_id: int) -> Response:
        user = tenant_user_get(tenant_id=request.auth.tenant_id, user_id=user_id)
        if user is None:  # another tenant's user is indistinguishable from no user
            raise NotFound("No such user.", code="user_not_found")
        services.user_sessions_revoke(user=user, actor=request.auth.user, source=AuditSource.API)
        return Response(status=status.HTTP_204_NO_CONTENT)
