"""The pure-ASGI fast path (`llm/asgi.py`) in front of Django: the metered endpoints answer exactly as
the Django views do (same endpoint code), without going through Django; everything else still does.

Requests go to `gateway_project.asgi.application`, what uvicorn serves, through httpx's ASGI
transport or, where the client must vanish mid-call, a hand-driven ASGI exchange. The header
comparison sends the same requests to the fast path and to Django's own ASGI handler through
tests/asgi_client.py, which is also how every persona client sends /v1/ requests in the suite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.db import connection
from django.test import override_settings

from catalog.models import Task
from gateway_project.asgi import application
from llm import gateway
from llm.asgi import REVIEWED_MIDDLEWARE
from llm.db import db_step
from metering.models import UsageLog, UsageReservation
from metering.services import meters_reconcile, policy_rule_set
from tenants.services import tenant_set_enforcement_mode
from tenants.tokens import tokens_for_user
from tests.asgi_client import Exchange, request
from tests.conftest import Persona, assert_error, require_postgres

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
URL = f"/v1/{TASK}/chat/completions"
MESSAGES = [{"role": "user", "content": "Describe a widget"}]
BODY = {"model": "auto", "messages": MESSAGES, "max_tokens": 50}


@pytest.fixture
def django_requests():
    """How many requests Django's own handler saw (the fast path sends no request signals)."""
    seen: list[object] = []

    def count(sender, **kwargs) -> None:
        seen.append(sender)

    request_started.connect(count)
    yield seen
    request_started.disconnect(count)


def bearer(persona: Persona) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens_for_user(persona.user)['access']}"}


def send(method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def assert_settled() -> None:
    assert meters_reconcile() == []
    assert not UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).exists()


def test_a_chat_call_is_served_without_django(tenant_admin, django_requests):
    r = send("POST", URL, json=BODY, headers=bearer(tenant_admin))

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"] == body["id"].removeprefix("chatcmpl-")
    assert int(r.headers["x-quota-tokens-remaining"]) > 0
    # What Django's security middleware would have added.
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert django_requests == []
    log = UsageLog.objects.get()
    assert (log.status, log.request_id) == ("SUCCESS", r.headers["x-request-id"])
    assert_settled()


def test_a_stream_is_served_without_django(tenant_admin, django_requests):
    r = send("POST", URL, json={**BODY, "stream": True, "stream_options": {"include_usage": True}},
             headers=bearer(tenant_admin))

    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert django_requests == []
    log = UsageLog.objects.get()
    assert (log.status, log.tokens_out) == ("SUCCESS", usage["completion_tokens"])
    assert_settled()


def test_models_are_served_without_django(tenant_admin, django_requests):
    r = send("GET", f"/v1/{TASK}/models", headers=bearer(tenant_admin))

    assert r.status_code == 200
    ids = {m["id"] for m in r.json()["data"]}
    assert ids and all(m["object"] == "model" for m in r.json()["data"])
    assert django_requests == []
    assert ids == {m["id"] for m in tenant_admin.django_client.get(f"/v1/{TASK}/models").json()["data"]}


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "not_authenticated"),
    ({"Authorization": "Bearer not-a-jwt"}, 401, "token_not_valid"),
])
def test_authentication_errors_have_the_error_shape(tenant_admin, headers, status, code):
    assert_error(send("POST", URL, json=BODY, headers=headers), status, code)


def test_unknown_task_and_bad_json_have_the_error_shape(tenant_admin):
    assert_error(send("POST", "/v1/LLM9_NOPE/chat/completions", json=BODY, headers=bearer(tenant_admin)), 404,
                 "task_not_found")
    assert_error(send("GET", "/v1/LLM9_NOPE/models", headers=bearer(tenant_admin)), 404, "task_not_found")
    assert_error(send("POST", URL, content=b"{nope", headers=bearer(tenant_admin)), 400, "invalid_json")
    assert_error(send("POST", URL, json=[1, 2], headers=bearer(tenant_admin)), 400, "invalid_body")
    assert not UsageLog.objects.exists()


def test_the_fast_path_and_the_django_view_answer_alike(tenant_admin):
    for body in ({"messages": []}, {"messages": MESSAGES, "max_tokens": -1}):
        fast = send("POST", URL, json=body, headers=bearer(tenant_admin))
        django = tenant_admin.django_client.post(URL, body, format="json")
        assert (fast.status_code, fast.json()) == (django.status_code, django.json())
    refused = {"model": "no-such-model", "messages": MESSAGES}
    fast = send("POST", URL, json=refused, headers=bearer(tenant_admin))
    django = tenant_admin.django_client.post(URL, refused, format="json")
    assert fast.status_code == django.status_code and fast.json() == django.json()
    assert fast.headers["x-request-id"] != django["X-Request-ID"]  # each refusal is its own ledger row


def test_an_oversize_body_is_413_without_being_read(tenant_admin, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 2000}]}
    assert_error(send("POST", URL, json=big, headers=bearer(tenant_admin)), 413, "request_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(3):
            yield b" " * 600

    assert_error(send("POST", URL, content=chunks(), headers=bearer(tenant_admin)), 413, "request_too_large")
    # The Django view refuses it the same way.
    assert_error(tenant_admin.django_client.post(URL, big, format="json"), 413, "request_too_large")
    assert not UsageLog.objects.exists()


def test_a_host_outside_allowed_hosts_is_refused(tenant_admin, settings):
    settings.ALLOWED_HOSTS = ["gateway.example"]
    assert_error(send("POST", URL, json=BODY, headers=bearer(tenant_admin)), 400, "disallowed_host")
    r = send("POST", URL, json=BODY, headers={**bearer(tenant_admin), "Host": "gateway.example"})
    assert r.status_code == 200


def test_an_unexpected_error_is_a_logged_500_in_the_error_shape(tenant_admin, monkeypatch, caplog):
    async def broken(**kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gateway, "chat_request", broken)
    with caplog.at_level(logging.ERROR):
        r = send("POST", URL, json=BODY, headers=bearer(tenant_admin))
    body = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret internals" in caplog.text
    assert body["error"]["type"] == "api_error"


def test_everything_else_goes_to_django(tenant_admin, django_requests):
    r = send("GET", URL, headers=bearer(tenant_admin))  # a wrong method: Django's view, same endpoint code
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error(send("GET", "/v1/LLM2_DRAFT/nothing-here", headers=bearer(tenant_admin)), 404, "not_found")
    assert send("GET", "/healthz").json() == {"status": "ok"}
    assert send("GET", "/api/me/", headers=bearer(tenant_admin)).json()["user"]["username"] == "acme-admin"
    assert len(django_requests) == 4


async def _exchange(path: str, body: dict, token: str, *, hang_up: asyncio.Event,
                    stall_after: int | None = None) -> list[dict]:
    """One request through the ASGI app; the client disconnects once `hang_up` is set. With
    `stall_after`, it stops reading after that many messages (the server's send blocks)."""
    payload = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    messages: list[dict] = []
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send_(message: dict) -> None:
        messages.append(message)
        if stall_after is not None and len(messages) >= stall_after:
            await asyncio.Event().wait()  # until the server gives up on us

    await asyncio.wait_for(application(scope, receive, send_), 20)
    return messages


def test_a_client_gone_mid_stream_cancels_the_upstream_and_is_settled(tenant_admin, settings):
    settings.OFFLINE_PROVIDER_LATENCY_MS = 4000  # a slow stream: ~40 words over 4 s
    token = tokens_for_user(tenant_admin.user)["access"]
    hang_up = asyncio.Event()

    async def scenario() -> list[dict]:
        exchange = asyncio.create_task(_exchange(URL, {**BODY, "max_tokens": 200, "stream": True}, token,
                                                 hang_up=hang_up))
        await asyncio.sleep(0.6)
        hang_up.set()
        return await exchange

    messages = asyncio.run(scenario())

    assert messages[0]["status"] == 200
    received = b"".join(m.get("body", b"") for m in messages[1:])
    assert received.count(b'"content":') >= 2 and b"[DONE]" not in received
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("CANCELLED", "client_disconnected")
    assert 0 < log.tokens_out < 200  # charged for what was generated before the hang-up
    assert_settled()


def test_a_client_gone_during_a_plain_call_is_settled(tenant_admin, settings):
    settings.OFFLINE_PROVIDER_LATENCY_MS = 3000
    token = tokens_for_user(tenant_admin.user)["access"]
    hang_up = asyncio.Event()

    async def scenario() -> list[dict]:
        exchange = asyncio.create_task(_exchange(URL, BODY, token, hang_up=hang_up))
        await asyncio.sleep(0.3)
        hang_up.set()
        return await exchange

    assert asyncio.run(scenario()) == []  # nobody to answer
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("CANCELLED", "client_disconnected")
    assert_settled()


def test_a_client_gone_while_the_server_waits_to_send_is_settled(tenant_admin, settings):
    """The hang-up lands while the stream is parked between events (its send blocked): closing the
    event generator is what settles the call then."""
    settings.OFFLINE_PROVIDER_LATENCY_MS = 2000
    token = tokens_for_user(tenant_admin.user)["access"]
    hang_up = asyncio.Event()

    async def scenario() -> list[dict]:
        exchange = asyncio.create_task(_exchange(URL, {**BODY, "max_tokens": 200, "stream": True}, token,
                                                 hang_up=hang_up, stall_after=3))
        await asyncio.sleep(0.5)
        hang_up.set()
        return await exchange

    messages = asyncio.run(scenario())

    assert len(messages) == 3
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("CANCELLED", "client_disconnected")
    assert_settled()


def test_a_client_gone_before_the_first_event_is_settled(tenant_admin, settings):
    """The hang-up lands before the event stream was ever iterated (the response start is still
    being sent): closing the never-started stream settles the call, it does not wait for expiry."""
    settings.OFFLINE_PROVIDER_LATENCY_MS = 2000
    token = tokens_for_user(tenant_admin.user)["access"]
    hang_up = asyncio.Event()

    async def scenario() -> list[dict]:
        exchange = asyncio.create_task(_exchange(URL, {**BODY, "stream": True}, token, hang_up=hang_up,
                                                 stall_after=1))
        await asyncio.sleep(0.5)
        hang_up.set()
        return await exchange

    messages = asyncio.run(scenario())

    assert [m["type"] for m in messages] == ["http.response.start"]
    log = UsageLog.objects.get()
    assert (log.status, log.error_code, log.tokens_out) == ("CANCELLED", "client_disconnected", 0)
    assert_settled()


@pytest.mark.postgres
def test_a_client_gone_while_its_admission_waits_for_a_lock_is_settled_when_it_commits(tenant_admin):
    """Cancelling the request cannot stop the admission already running in its thread: when that
    admission commits, the call is settled as cancelled at once (its concurrency slot freed)."""
    require_postgres("PostgreSQL row locks")
    token = tokens_for_user(tenant_admin.user)["access"]
    assert send("POST", URL, json=BODY, headers=bearer(tenant_admin)).status_code == 200  # meters exist now
    params = connection.settings_dict
    blocker = psycopg.connect(host=params["HOST"], port=params["PORT"] or 5432, user=params["USER"],
                              password=params["PASSWORD"] or None, dbname=params["NAME"])
    blocker.execute("SELECT id FROM metering_usagemeter WHERE tenant_id = %s FOR UPDATE", [tenant_admin.tenant.pk])
    hang_up = asyncio.Event()

    def cancelled_rows() -> int:
        return UsageLog.objects.filter(status="CANCELLED").count()

    async def scenario() -> tuple[list[dict], int]:
        exchange = asyncio.create_task(_exchange(URL, BODY, token, hang_up=hang_up))
        await asyncio.sleep(0.5)  # admission is waiting for the meters' locks
        hang_up.set()
        messages = await exchange
        blocker.rollback()  # the admission commits now, after its client is gone
        for _ in range(100):
            if await db_step(cancelled_rows)():
                break
            await asyncio.sleep(0.05)
        return messages, await db_step(cancelled_rows)()

    try:
        messages, cancelled = asyncio.run(scenario())
    finally:
        blocker.close()

    assert messages == [] and cancelled == 1
    log = UsageLog.objects.get(status="CANCELLED")
    assert (log.error_code, log.tokens_in, log.tokens_out) == ("client_disconnected", 0, 0)
    assert_settled()


def test_provider_sdks_are_imported_when_the_server_starts_not_by_the_first_call():
    """Importing an SDK inside a call would block the event loop (and every request on it) for
    seconds; the ASGI application module imports them all up front."""
    probe = ("import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'gateway_project.settings'); "
             "import gateway_project.asgi; "
             "print(all(m in sys.modules for m in ('openai', 'anthropic', 'google.genai')))")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=settings.BASE_DIR, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


# --- the persona client serves /v1 through the fast path ---------------------------------------------


def test_the_persona_client_sends_v1_requests_through_the_fast_path(tenant_admin, django_requests):
    r = tenant_admin.client.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="through-asgi")
    assert r.status_code == 200, r.content
    assert r.asgi.headers[0] == ("content-type", "application/json")  # as the fast path sent it
    assert UsageLog.objects.get().request_id == r["X-Request-ID"]
    assert tenant_admin.client.get(f"/v1/{TASK}/models").status_code == 200
    assert django_requests == []
    assert tenant_admin.client.get("/api/me/").status_code == 200  # not /v1/: Django's test handler
    assert tenant_admin.django_client.post(URL, BODY, format="json").status_code == 200  # the Django view
    assert len(django_requests) == 2


@pytest.mark.django_db(transaction=False)
def test_requests_through_the_asgi_client_see_the_tests_own_transaction(tenant_admin):
    """Under pytest-django's plain `db` (one transaction, never committed) the fast path's db steps run on
    the test's thread and connection: they see the tenant created here and write the ledger into it."""
    assert connection.in_atomic_block
    r = tenant_admin.client.post(URL, BODY, format="json")
    assert r.status_code == 200, r.content
    assert UsageLog.objects.get().request_id == r["X-Request-ID"]
    assert_settled()


# --- the fast path answers with the headers Django would have sent -------------------------------------


# Headers whose values must differ between two calls: each call is its own ledger row.
PER_CALL = {"x-request-id"}


def comparable(result: Exchange) -> list[tuple[str, str]]:
    out = []
    for name, value in result.headers:
        if name in PER_CALL:
            assert value.startswith("req_"), (name, value)
            value = "<per call>"
        elif name == "content-length":
            assert int(value) == len(result.body), (value, len(result.body))
            value = "<its body's length>"
        elif name == "x-gateway-warning":  # names the caller's own rule and tenant
            value = re.sub(r"rule #\d+ \(tenant [\w-]+\)", "rule #<id> (tenant <slug>)", value)
        out.append((name, value))
    return sorted(out)


@dataclass
class Case:
    name: str
    method: str = "POST"
    path: str = URL
    json: object = None
    body: bytes = b""
    authorization: str | None = "persona"  # the persona's bearer token, another value, or None
    headers: dict = field(default_factory=dict)
    setup: Callable[[Persona, object], None] | None = None
    overrides: dict = field(default_factory=dict)


def _first_keyed_call(persona: Persona, app) -> None:
    assert request(app, "POST", URL, json=BODY, headers={**bearer(persona), "Idempotency-Key": "replay-me"}).status \
        == 200


def _no_slots(persona: Persona, app) -> None:
    policy_rule_set(scope="TENANT", tenant=persona.tenant, key="max_concurrent", value=0,
                    task=Task.objects.get(code=TASK))


# The same requests in the same order for two fresh tenants on the same plan, so that everything that
# depends on the tenant's state (quota remaining, warnings) is the same on both sides.
CASES = [
    Case("success", json=BODY),
    Case("stream", json={**BODY, "stream": True, "stream_options": {"include_usage": True}}),
    Case("models", method="GET", path=f"/v1/{TASK}/models"),
    Case("idempotent replay", json=BODY, headers={"Idempotency-Key": "replay-me"}, setup=_first_keyed_call),
    Case("soft mode over quota", json=BODY,
         setup=lambda persona, app: (tenant_set_enforcement_mode(slug=persona.tenant.slug, mode="SOFT"),
                                     policy_rule_set(scope="TENANT", tenant=persona.tenant,
                                                     key="tenant_tokens_per_day", value=10))),
    Case("400 bad body", json={"messages": []}),
    Case("400 invalid json", body=b"{nope", headers={"Content-Type": "application/json"}),
    Case("401 no token", json=BODY, authorization=None),
    Case("401 bad token", json=BODY, authorization="Bearer not-a-jwt"),
    Case("404 unknown task", path="/v1/LLM9_NOPE/chat/completions", json=BODY),
    Case("404 unknown task (models)", method="GET", path="/v1/LLM9_NOPE/models"),
    Case("413 too large", json=BODY, overrides={"DATA_UPLOAD_MAX_MEMORY_SIZE": 20}),
    Case("429 refused", json=BODY, setup=_no_slots),  # last: no call is admitted after it
]

HARDENED = {"SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": True,
            "SECURE_REFERRER_POLICY": ["no-referrer", "strict-origin-when-cross-origin"],
            "SECURE_CROSS_ORIGIN_OPENER_POLICY": None, "SECURE_CONTENT_TYPE_NOSNIFF": False,
            "X_FRAME_OPTIONS": "SAMEORIGIN"}


@pytest.mark.parametrize(("security", "scheme", "extra_headers"), [
    ({}, "http", {}),
    (HARDENED, "https", {}),
    ({**HARDENED, "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https")}, "http",
     {"X-Forwarded-Proto": "https"}),  # TLS ended at our proxy
], ids=["defaults", "hardened-https", "hardened-behind-tls-proxy"])
def test_the_fast_path_sends_the_status_and_headers_django_sends(tenant_admin, outsider, settings, django_requests,
                                                                  security, scheme, extra_headers):
    for name, value in security.items():
        setattr(settings, name, value)
    django = ASGIHandler()  # after the settings: SecurityMiddleware reads them when it is built
    sides = ((tenant_admin, application), (outsider, django))
    for case in CASES:
        with override_settings(**case.overrides):
            answers = []
            for persona, app in sides:
                if case.setup is not None:
                    case.setup(persona, app)
                headers = {**extra_headers, **case.headers}
                if case.authorization == "persona":
                    headers.update(bearer(persona))
                elif case.authorization is not None:
                    headers["Authorization"] = case.authorization
                seen = len(django_requests)
                answers.append(request(app, case.method, case.path, json=case.json, body=case.body,
                                       headers=headers, scheme=scheme))
                assert len(django_requests) == seen + (app is django), f"{case.name}: not served where meant"
        fast, slow = answers
        assert (fast.status, fast.streamed) == (slow.status, slow.streamed), case.name
        assert comparable(fast) == comparable(slow), case.name
        if fast.status >= 400:
            assert fast.body == slow.body, case.name
    names = {name for name, _ in comparable(fast)}
    if security:
        assert "strict-transport-security" in names and "x-content-type-options" not in names
    else:  # what Django's middleware adds by default, all compared above
        assert {"x-content-type-options", "referrer-policy", "cross-origin-opener-policy", "x-frame-options"} <= names
        assert "strict-transport-security" not in names


@pytest.mark.parametrize(("setting", "value", "headers"), [
    ("DISALLOWED_USER_AGENTS", [re.compile(r"^BadBot/")], {"User-Agent": "BadBot/2.1"}),
    ("PREPEND_WWW", True, {}),
], ids=["disallowed-user-agent", "prepend-www"])
def test_what_commonmiddleware_refuses_or_redirects_is_answered_as_django_answers_it(
        tenant_admin, settings, setting, value, headers):
    setattr(settings, setting, value)
    django = ASGIHandler()
    for method, path, body in (("POST", URL, BODY), ("GET", f"/v1/{TASK}/models", None)):
        fast = request(application, method, path, json=body, headers={**bearer(tenant_admin), **headers})
        slow = request(django, method, path, json=body, headers={**bearer(tenant_admin), **headers})
        assert fast.status == slow.status and fast.status in (301, 403), (fast.status, slow.status)
        assert comparable(fast) == comparable(slow)
    assert not UsageLog.objects.exists()
    # An agent the list does not name, or a host already on www., is served as usual.
    settings.ALLOWED_HOSTS = ["www.testserver", "testserver"]
    ok = request(application, "POST", URL, json=BODY, headers={**bearer(tenant_admin), "User-Agent": "GoodBot/1",
                                                                "Host": "www.testserver"})
    assert ok.status == 200


# --- the fast path is reviewed against the middleware Django runs --------------------------------------


def test_the_middleware_is_the_list_the_fast_path_was_reviewed_against():
    added = [m for m in settings.MIDDLEWARE if m not in REVIEWED_MIDDLEWARE]
    removed = [m for m in REVIEWED_MIDDLEWARE if m not in settings.MIDDLEWARE]
    assert tuple(settings.MIDDLEWARE) == REVIEWED_MIDDLEWARE, (
        f"settings.MIDDLEWARE changed (added {added}, removed {removed}, or reordered) but POST "
        "/v1/{task}/chat/completions and GET /v1/{task}/models are served by llm/asgi.py without Django's "
        "middleware. Read what each added or changed middleware does to a request and a response; if it "
        "matters for bearer-token API calls (a header, a refusal, a redirect), do it in llm/asgi.py (or hand such "
        "requests to Django there) and cover it in test_the_fast_path_sends_the_status_and_headers_django_sends; "
        "then record the list, with what each entry does for the fast path, in llm/asgi.py's REVIEWED_MIDDLEWARE.")
