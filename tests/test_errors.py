"""One error shape everywhere: {"error": {"code", "message", "type"}}, the right status, never a traceback.

This module doubles as a URLconf (the project's routes plus one plain Django view that crashes) for the
tests marked `@pytest.mark.urls(__name__)`; the 404/500 handlers are the project's own.
"""

from __future__ import annotations

import logging

import pytest
from django.test import Client
from django.urls import path
from rest_framework.test import APIClient

from gateway_project import urls as project_urls
from tenants import apis
from tests.conftest import assert_error

SECRET_DETAIL = "postgres://gateway:hunter2@db.internal/prod"


def _crashing_plain_view(request):
    raise RuntimeError(f"could not connect to {SECRET_DETAIL}")


urlpatterns = [path("test-crash/", _crashing_plain_view), *project_urls.urlpatterns]
handler404 = project_urls.handler404
handler500 = project_urls.handler500


def assert_json(response) -> None:
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]


def assert_no_internals(response) -> None:
    text = response.content.decode()
    for leak in ("Traceback", "RuntimeError", "hunter2", SECRET_DETAIL, 'File "', ".py"):
        assert leak not in text, (leak, text)


# --- 404 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/no-such-page", "/api/no-such-endpoint/", "/api/tenant/users/not-an-id/"])
def test_unknown_url_is_a_json_404(db, url):
    for client in (Client(), APIClient()):
        response = client.get(url)
        assert_error(response, 404, "not_found")
        assert_json(response)


def test_unknown_url_with_post_is_a_json_404(db):
    response = APIClient().post("/api/nothing-here/", {"a": 1}, format="json")
    assert_error(response, 404, "not_found")
    assert_json(response)


# --- 405 ---------------------------------------------------------------------------------------


def test_wrong_method_is_405(tenant_admin):
    response = APIClient().get("/api/auth/token/")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response["Allow"]
    assert_json(response)

    response = tenant_admin.client.put("/api/me/", {}, format="json")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


# --- 400 ---------------------------------------------------------------------------------------


def test_validation_error_names_each_bad_field(tenant_admin):
    response = tenant_admin.client.post(
        "/api/tenant/users/", {"username": "", "email": "not-an-email", "role": "OWNER"}, format="json"
    )
    body = assert_error(response, 400, "validation_error")
    assert body["error"]["type"] == "invalid_request_error"
    fields = body["error"]["details"]["fields"]
    assert {"username", "email", "password", "role"} == set(fields)
    for messages in fields.values():
        assert isinstance(messages, list) and messages and all(isinstance(m, str) and m for m in messages)


def test_malformed_json_is_a_400_in_the_error_shape(catalog):
    response = APIClient().post("/api/auth/token/", data="{not json", content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert_json(response)


def test_service_errors_use_the_shape_too(catalog):
    response = APIClient().post(
        "/api/auth/signup/",
        {"ati_token": "nope", "tenant_name": "X", "username": "x-admin", "email": "x@example.com",
         "password": "a-long-enough-passphrase-1"},
        format="json",
    )
    body = assert_error(response, 400, "ati_token_unknown")
    assert body["error"]["type"] == "invalid_request_error"


# --- 401 / 403 -----------------------------------------------------------------------------------


def test_unauthenticated_is_401_with_www_authenticate(catalog):
    response = APIClient().get("/api/me/")
    body = assert_error(response, 401, "not_authenticated")
    assert body["error"]["type"] == "authentication_error"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert_json(response)


def test_bad_token_is_401_in_the_error_shape(catalog):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not.a.jwt")
    body = assert_error(client.get("/api/me/"), 401, "token_not_valid")
    assert body["error"]["type"] == "authentication_error"


def test_forbidden_is_403_in_the_error_shape(member):
    body = assert_error(member.client.get("/api/tenant/users/"), 403, "forbidden")
    assert body["error"]["type"] == "permission_error"


# --- 500 ---------------------------------------------------------------------------------------


def test_unexpected_exception_in_an_api_view_is_a_logged_500_without_internals(tenant_admin, monkeypatch, caplog):
    def explode(self, request):
        raise RuntimeError(f"could not connect to {SECRET_DETAIL}")

    monkeypatch.setattr(apis.MeApi, "get", explode)
    client = tenant_admin.client
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/me/")

    body = assert_error(response, 500, "internal_error")
    assert body == {"error": {"code": "internal_error", "message": "Internal server error.", "type": "api_error"}}
    assert_json(response)
    assert_no_internals(response)

    # The detail is not shown, but it is logged with its traceback for the operators.
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert logged, caplog.text
    assert any(isinstance(r.exc_info[1], RuntimeError) and SECRET_DETAIL in str(r.exc_info[1]) for r in logged)


@pytest.mark.urls(__name__)
def test_unexpected_exception_in_a_plain_view_is_a_logged_500_without_internals(db, caplog):
    with caplog.at_level(logging.ERROR):
        response = Client(raise_request_exception=False).get("/test-crash/")
    body = assert_error(response, 500, "internal_error")
    assert body["error"]["type"] == "api_error"
    assert_json(response)
    assert_no_internals(response)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert any(isinstance(r.exc_info[1], RuntimeError) for r in logged), caplog.text


# --- health ------------------------------------------------------------------------------------


def test_healthz_is_up_without_a_database():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_database_and_cache(db):
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "cache": "ok"}}

