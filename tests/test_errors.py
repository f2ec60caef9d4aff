"""One error shape everywhere: {"error": {"code", "message", "type"}}, the right status, never a traceback.

This module doubles as a URLconf (the project's routes plus one plain Django view that crashes) for the
tests marked `@pytest.mark.urls(__name__)`; the 404/500 handlers are the project's own.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import path
from rest_framework.test import APIClient

from gateway_project import urls as project_urls
from metering.models import UsageMeter, UsageReservation
from tenants import apis
from tests.conftest import PASSWORD, assert_error

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


# --- client input never reaches a 500 (issue 16) ----------------------------------------------------
# Each case was a 500 before; the property-based tests (tests/test_fuzz_api.py, tests/test_fuzz_v1.py)
# look for more of them.


def post_raw(client, url: str, raw: bytes | str, content_type: str = "application/json"):
    return client.generic("POST", url, data=raw.encode() if isinstance(raw, str) else raw, content_type=content_type)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("params", [{"to": "0001-01-01"}, {"from": "0001-01-01", "to": "9999-12-31"},
                                    {"from": "9999-12-01", "to": "9999-12-31"}, {"from": "1999-12-31"}])
def test_usage_dates_out_of_range_are_400(tenant_admin, params):
    body = assert_error(tenant_admin.client.get("/api/usage/", params), 400, "validation_error")
    assert set(body["error"]["details"]["fields"]) & {"from", "to"}, body


def test_usage_ranges_are_capped_at_366_days(tenant_admin):
    today = datetime.now(UTC).date()
    year = {"from": (today - timedelta(days=365)).isoformat(), "to": today.isoformat()}
    response = tenant_admin.client.get("/api/usage/", year)
    assert response.status_code == 200, response.content
    assert (response.json()["from"], response.json()["to"]) == (year["from"], year["to"])

    longer = {**year, "from": (today - timedelta(days=366)).isoformat()}
    body = assert_error(tenant_admin.client.get("/api/usage/", longer), 400, "validation_error")
    assert "366 days" in body["error"]["details"]["fields"]["non_field_errors"][0]
    # Only 'from', with 'to' defaulting to today: the same cap.
    assert_error(tenant_admin.client.get("/api/usage/", {"from": "2001-01-01"}), 400, "validation_error")


def test_usage_from_just_after_the_earliest_day_defaults_without_underflow(tenant_admin):
    response = tenant_admin.client.get("/api/usage/", {"to": "2000-01-10"})
    assert response.status_code == 200, response.content
    assert (response.json()["from"], response.json()["to"]) == ("2000-01-01", "2000-01-10")


@pytest.mark.parametrize("page", ["abc", "0", "-1", "1.5", "9" * 5000, "²"])
def test_a_malformed_page_number_is_400_and_a_page_past_the_end_404(tenant_admin, page):
    for url in ("/api/usage/logs/", "/api/notifications/"):
        body = assert_error(tenant_admin.client.get(url, {"page": page}), 400, "validation_error")
        assert set(body["error"]["details"]["fields"]) == {"page"}
        assert_error(tenant_admin.client.get(url, {"page": "7"}), 404, "not_found")
        assert tenant_admin.client.get(url, {"page": "last"}).status_code == 200


@pytest.mark.parametrize("url", ["/api/auth/token/", "/api/tenant/users/", "/api/alert-channels/",
                                 "/api/quota-requests/"])
def test_json_nested_4000_levels_is_400(tenant_admin, url):
    assert_error(post_raw(tenant_admin.client, url, deep(4000)), 400, "json_too_deep")
    assert_error(post_raw(tenant_admin.client, url, f'{{"username": {deep(4000)}}}'), 400, "json_too_deep")
    # Shallower than Python's recursion limit, but deeper than any body of this API.
    assert_error(post_raw(tenant_admin.client, url, deep(65)), 400, "json_too_deep")


@pytest.mark.parametrize("body", [
    {"username": "x", "email": "x@example.com", "password": PASSWORD, "role": "\ud800"},
    {"username": "\udfff", "email": "x@example.com", "password": PASSWORD},
    {"username": "x", "email": "x@example.com", "password": PASSWORD, "\ud800": 1},
    {"username": "nul\x00", "email": "x@example.com", "password": PASSWORD},
])
def test_lone_surrogates_and_nuls_in_json_are_400(tenant_admin, body):
    response = post_raw(tenant_admin.client, "/api/tenant/users/", json.dumps(body))  # ensure_ascii: "\\ud800"
    assert_error(response, 400, "invalid_string")


def test_a_surrogate_in_a_login_is_400_not_a_broken_throttle_key(catalog):
    assert_error(post_raw(APIClient(), "/api/auth/token/", '{"username": "\\ud800", "password": "x"}'), 400,
                 "invalid_string")


@pytest.mark.parametrize("raw", ['{"wanted_value": 1e400}', '{"wanted_value": NaN}', '{"wanted_value": -Infinity}',
                                 "9" * 5000, b'{"key": "\xff"}'])
def test_numbers_json_cannot_hold_and_bytes_that_are_not_utf8_are_400(tenant_admin, raw):
    assert_error(post_raw(tenant_admin.client, "/api/quota-requests/", raw), 400, "parse_error")


def test_an_unknown_charset_is_400(tenant_admin):
    response = post_raw(tenant_admin.client, "/api/quota-requests/", "{}", "application/json; charset=no-such")
    assert response.status_code == 400 and set(response.json()) == {"error"}, response.content


@pytest.mark.parametrize("value", ["1e999999", "99999999999999999999", 10**30, "1" * 5000])
def test_quota_requests_for_absurd_values_are_400(tenant_admin, value):
    for key in ("tenant_cost_per_month_usd", "tenant_tokens_per_month"):
        response = post_raw(tenant_admin.client, "/api/quota-requests/", json.dumps({"key": key,
                                                                                     "wanted_value": value}))
        body = assert_error(response, 400, "invalid_policy")
        assert body["error"]["message"]


@pytest.mark.parametrize("target", ["http://[::1", "https://hooks.example.com:99999/x", "https://hooks.example.com:x/"])
def test_an_alert_channel_target_that_is_no_url_is_400(tenant_admin, target):
    body = {"kind": "WEBHOOK", "name": "ops", "target": target}
    assert_error(tenant_admin.client.post("/api/alert-channels/", body, format="json"), 400, "invalid_target")


def test_an_oversize_json_body_to_the_rest_api_is_413(tenant_admin, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"username": "x" * 2000, "email": "x@example.com", "password": PASSWORD}
    response = tenant_admin.client.post("/api/tenant/users/", body, format="json")
    assert_error(response, 413, "request_too_large")
    form = tenant_admin.client.post("/api/tenant/users/", body)  # multipart: Django's own limit
    assert_error(form, 413, "request_too_large")
    urlencoded = post_raw(tenant_admin.client, "/api/tenant/users/", "username=" + "x" * 2000,
                          "application/x-www-form-urlencoded")
    assert_error(urlencoded, 413, "request_too_large")


def test_too_many_form_fields_is_400(tenant_admin, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    raw = "&".join(f"f{i}=1" for i in range(20))
    response = post_raw(tenant_admin.client, "/api/tenant/users/", raw, "application/x-www-form-urlencoded")
    assert_error(response, 400, "bad_request")


def assert_no_holds() -> None:
    assert not UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).exists()
    assert not UsageMeter.objects.exclude(reserved=0).exists()


def assert_a_400_in_the_error_shape(response) -> None:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"} and all(body["error"].get(k) for k in ("code", "message", "type")), body


V1 = "/v1/LLM2_DRAFT/chat/completions"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True])
def test_v1_json_nested_4000_levels_is_400(tenant_admin, stream):
    stream_flag = "true" if stream else "false"
    for raw in (deep(4000), '{"model": "auto", "stream": ' + stream_flag + ', "messages": [{"role": "user", '
                '"content": ' + deep(4000) + "}]}"):
        assert_a_400_in_the_error_shape(post_raw(tenant_admin.client, V1, raw))
    assert_no_holds()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True])
def test_v1_stream_options_that_is_no_object_is_400(tenant_admin, stream):
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "stream_options": "yes"}
    assert_a_400_in_the_error_shape(tenant_admin.client.post(V1, body, format="json"))
    assert_no_holds()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True])
def test_v1_a_lone_surrogate_in_a_message_is_400(tenant_admin, stream):
    raw = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi \ud800"}], "stream": stream})
    assert "\\ud800" in raw  # sent as the JSON escape, the way a client sends it
    assert_a_400_in_the_error_shape(post_raw(tenant_admin.client, V1, raw))
    assert_no_holds()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["/api/prior-art/", "/api/drafting/", "/api/diagrams/"])
def test_task_endpoints_json_nested_4000_levels_is_400(tenant_admin, url):
    assert_a_400_in_the_error_shape(post_raw(tenant_admin.client, url, deep(4000)))
    assert_no_holds()


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



def test_a_plain_django_view_with_the_database_down_is_a_503_to_retry(tenant_admin, monkeypatch):
    """The console and the admin are plain Django views: a database outage there ends in handler500,
    which answers 503 database_unavailable (with Retry-After) instead of a 500."""
    from django.db import OperationalError
    from django.test import Client

    from adminconsole import views

    def down(*args, **kwargs):
        raise OperationalError("could not connect to server")

    staff = Client(raise_request_exception=False)
    staff.force_login(_superuser())
    monkeypatch.setattr(views, "render", down)
    response = staff.get("/console/")
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response["Retry-After"] == "5"


def _superuser():
    from tenants.models import User

    return User.objects.create_superuser(username="ops-root", email="ops@example.com", password="x" * 20)
