"""The API describes itself: the OpenAPI schema covers every surface, /api/docs/ works offline, and a
schemathesis run against the schema (authenticated as a tenant admin) finds no 5xx and no answer
that contradicts the schema."""

from __future__ import annotations

import re

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tenants.tokens import tokens_for_user
from tests.conftest import Persona

pytestmark = pytest.mark.django_db

SURFACES = [
    ("/v1/{task}/chat/completions", "post"),
    ("/v1/{task}/messages", "post"),
    ("/v1/{task}/v1/messages", "post"),
    ("/v1/{task}/models", "get"),
    ("/api/prior-art/", "post"),
    ("/api/drafting/", "post"),
    ("/api/diagrams/", "post"),
    ("/api/keys/", "get"),
    ("/api/keys/", "post"),
    ("/api/usage/", "get"),
    ("/api/usage/logs/", "get"),
]


def _schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def test_schema_covers_every_surface_with_bodies_and_the_bearer_scheme():
    schema = _schema()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    for path, method in SURFACES:
        operation = schema["paths"][path][method]
        success = next(code for code in operation["responses"] if code.startswith("2"))
        if success != "204":
            assert operation["responses"][success].get("content"), f"{method} {path} has no response body"
        if method == "post" and "sessions" not in path:
            assert operation.get("requestBody"), f"{method} {path} has no request body"
        assert "429" in operation["responses"] or path.endswith("/models") or path.startswith("/api/keys")


def test_every_drf_operation_declares_its_response_body():
    for path, operations in _schema()["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("2") and status != "204":
                    assert response.get("content"), f"{method.upper()} {path} {status} has no body in the schema"


def test_schema_generation_has_no_warnings(capsys):
    from drf_spectacular.drainage import GENERATOR_STATS

    GENERATOR_STATS.reset()
    _schema()
    assert not GENERATOR_STATS, f"schema generation warned: {capsys.readouterr().err}"


def test_swagger_ui_is_served_from_the_gateways_own_static_files(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.content.decode())
    assert assets, "the docs page references no assets"
    for asset in assets:
        assert not asset.startswith(("http://", "https://", "//")), f"{asset} needs the internet"
    assert any("swagger-ui-bundle.js" in asset for asset in assets)
    from django.contrib.staticfiles import finders

    bundle = next(a for a in assets if "swagger-ui-bundle.js" in a)
    assert finders.find(bundle.split("/static/", 1)[1]), "the Swagger UI bundle is not in the static files"


# Built at collection (pytest-django has set Django up by then; generating it touches no database).
schema = schemathesis.openapi.from_dict(_schema())

# Signing out everywhere and changing the password end the credential the run authenticates with:
# they are tested through their URLs in tests/tenants/, not fuzzed here.
fuzzed = schema.exclude(path_regex=r"/(sessions/revoke|password)/$")


@pytest.fixture
def test_connection_kept():
    """What Django's test client does for its requests: the handler's request signals would close the
    test's database connection after each request (inside the test's transaction, on PostgreSQL)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@fuzzed.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_answers_match_the_schema_and_never_5xx(case, tenant_admin: Persona, test_connection_kept):
    case.call_and_validate(
        app=WSGIHandler(),
        headers={"Authorization": f"Bearer {tokens_for_user(tenant_admin.user)['access']}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
