"""Response shapes of the identity API, declared so the OpenAPI schema has bodies (schemathesis checks
every answer against them: tests/test_openapi_schema.py)."""

from __future__ import annotations

from rest_framework import serializers


class TokenPairSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


class AccessTokenSerializer(serializers.Serializer):
    access = serializers.CharField()


class UserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    role = serializers.CharField()
    is_active = serializers.BooleanField()
    date_joined = serializers.DateTimeField()


class UserListSerializer(serializers.Serializer):
    results = UserSerializer(many=True)


class TenantRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()


class SignupTenantSerializer(TenantRefSerializer):
    plan = serializers.CharField()


class SignupUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    role = serializers.CharField()


class SignupResultSerializer(TokenPairSerializer):
    tenant = SignupTenantSerializer()
    user = SignupUserSerializer()


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    tenant = TenantRefSerializer()
    plan = serializers.CharField()
    ati_id = serializers.CharField(allow_null=True)
    role = serializers.CharField()
