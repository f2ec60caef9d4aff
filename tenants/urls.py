from django.urls import path

from tenants import apis, apis_keys

urlpatterns = [
    path("auth/signup/", apis.SignupApi.as_view(), name="auth-signup"),
    path("auth/token/", apis.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/token/refresh/", apis.TokenRefreshApi.as_view(), name="auth-token-refresh"),
    path("me/", apis.MeApi.as_view(), name="me"),
    path("me/password/", apis.MePasswordApi.as_view(), name="me-password"),
    path("me/sessions/revoke/", apis.MeSessionsRevokeApi.as_view(), name="me-sessions-revoke"),
    path("tenant/users/", apis.TenantUserListApi.as_view(), name="tenant-users"),
    path("tenant/users/<int:user_id>/", apis.TenantUserDetailApi.as_view(), name="tenant-user-detail"),
    path(
        "tenant/users/<int:user_id>/sessions/revoke/", apis.TenantUserSessionsRevokeApi.as_view(),
        name="tenant-user-sessions-revoke",
    ),
    path("keys/", apis_keys.ApiKeyListApi.as_view(), name="api-keys"),
    path("keys/<int:key_id>/", apis_keys.ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("keys/<int:key_id>/rotate/", apis_keys.ApiKeyRotateApi.as_view(), name="api-key-rotate"),
]
