"""The one metered lifecycle (`llm/metered.py`) as a client sees it, through the ASGI application
uvicorn serves: a stream is in the ledger before its last chunks; a malformed request is refused
before it is admitted; any failure after admission settles; a running call renews its lease and a
call that outlived it is still charged; task endpoints honour Idempotency-Key."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from asgiref.sync import sync_to_async

from gateway_project.asgi import application
from llm import calls
from llm.adapters.drafting import DraftingAdapter
from metering import services
from metering.models import UsageLog, UsageMeter, UsageReservation
from tenants.tokens import tokens_for_user
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/LLM2_DRAFT/chat/completions"
MESSAGES = [{"role": "user", "content": "Describe a folding hinge"}]


def bearer(persona) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens_for_user(persona.user)['access']}"}


async def _request(method: str, path: str, **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
        return await client.request(method, path, **kwargs)


def send(method: str, path: str, **kwargs) -> httpx.Response:
    return asyncio.run(_request(method, path, **kwargs))


def assert_nothing_held() -> None:
    assert not UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).exists()
    assert not UsageMeter.objects.filter(reserved__gt=0).exists()
    assert services.meters_reconcile() == []


# --- item 2: a stream is settled before its usage chunk and [DONE] --------------------------------


def test_a_stream_is_in_the_ledger_before_its_usage_chunk_and_done(tenant_admin):
    token = tokens_for_user(tenant_admin.user)["access"]
    payload = json.dumps({"messages": MESSAGES, "max_tokens": 60, "stream": True,
                          "stream_options": {"include_usage": True}}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": URL, "raw_path": URL.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    seen_at_usage: list[tuple[dict, list[tuple]]] = []
    done_seen: list[bool] = []

    def ledger() -> list[tuple]:
        return list(UsageLog.objects.values_list("status", "tokens_in", "tokens_out"))

    async def receive() -> dict:
        if not done_seen:
            done_seen.append(False)
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}  # pragma: no cover

    async def send_(message: dict) -> None:
        body = message.get("body", b"")
        for line in body.decode().split("\n\n"):
            if line.startswith("data: {") and '"usage"' in line:
                # The moment the client reads its usage: the call must already be in the ledger.
                seen_at_usage.append((json.loads(line.removeprefix("data: "))["usage"],
                                      await sync_to_async(ledger)()))
            if line == "data: [DONE]":
                assert seen_at_usage, "[DONE] came before the usage chunk"

    asyncio.run(asyncio.wait_for(application(scope, receive, send_), 20))

    assert len(seen_at_usage) == 1
    usage, rows = seen_at_usage[0]
    assert rows == [("SUCCESS", usage["prompt_tokens"], usage["completion_tokens"])]
    assert_nothing_held()


# --- item 8: malformed requests are refused before admission, and never leak a hold ---------------


def _deep(levels: int) -> dict:
    content: object = "x"
    for _ in range(levels):
        content = [content]
    return {"messages": [{"role": "user", "content": "hi", "extra": content}]}


@pytest.mark.parametrize("body, code", [
    ({"messages": MESSAGES, "stream": 1}, "invalid_stream"),
    ({"messages": MESSAGES, "stream": "true"}, "invalid_stream"),
    ({"messages": MESSAGES, "stream": True, "stream_options": "yes"}, "invalid_stream_options"),
    ({"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "yes"}}, "invalid_stream_options"),
    ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "invalid_stream_options"),
    ({"messages": [{"role": "user", "content": "a \ud800 hinge"}]}, "invalid_text"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}, "invalid_text"),
    ({"messages": [{"role": "user", "content": "a \u0000 hinge"}]}, "invalid_text"),  # jsonb cannot hold it
    ({"messages": MESSAGES, "temperature": 7}, "invalid_temperature"),
    (_deep(100), "invalid_body"),
])
def test_a_malformed_request_is_a_400_and_takes_no_hold(tenant_admin, body, code):
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as \\ud800, as clients send it
    for _ in range(3):  # each would have kept a concurrency slot and thousands of tokens before
        r = send("POST", URL, content=raw, headers={**bearer(tenant_admin), "Content-Type": "application/json"})
        assert_error(r, 400, code)
    assert not UsageReservation.objects.exists()
    assert not UsageLog.objects.exists()
    assert_nothing_held()


def test_json_nested_4000_levels_deep_is_a_400(tenant_admin):
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 4000 + b"]" * 4000 + b"}"
    r = send("POST", URL, content=raw, headers={**bearer(tenant_admin), "Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")
    assert_nothing_held()


def test_nan_is_not_json(tenant_admin):
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    r = send("POST", URL, content=raw, headers={**bearer(tenant_admin), "Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")


@pytest.mark.parametrize("stream", [False, True])
def test_any_failure_after_admission_settles_the_call(tenant_admin, monkeypatch, stream):
    """Not a check per call site: whatever breaks inside a running call, its holds are settled."""
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug after admission")
        yield  # pragma: no cover - makes the stream variant an async generator

    async def broken_chat(*args, **kwargs):
        raise RuntimeError("a bug after admission")

    monkeypatch.setattr(calls, "stream_with_fallback", broken)
    monkeypatch.setattr(calls, "chat_with_fallback", broken_chat)
    r = send("POST", URL, json={"messages": MESSAGES, "stream": stream}, headers=bearer(tenant_admin))
    if not stream:
        assert_error(r, 500, "internal_error")
    assert "a bug" not in r.text
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("ERROR", "internal_error")
    assert UsageReservation.objects.get().status == UsageReservation.Status.COMPLETED
    assert_nothing_held()


def test_a_failure_inside_a_task_pipeline_settles_it(tenant_admin, monkeypatch):
    async def broken(self, run, parsed):
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(DraftingAdapter, "run", broken)
    r = tenant_admin.client.post("/api/drafting/", {"disclosure": "A hinge with a damper " * 5}, format="json")
    assert_error(r, 500, "internal_error")
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("ERROR", "internal_error")
    assert_nothing_held()


# --- item 9: a running call renews its lease; one that outlived it is still charged ----------------


async def _call_while_expiry_runs(persona, *, expire_after: float) -> tuple[httpx.Response, int]:
    call = asyncio.create_task(_request("POST", URL, json={"messages": MESSAGES, "max_tokens": 40},
                                        headers=bearer(persona)))
    await asyncio.sleep(expire_after)
    released = await sync_to_async(services.reservations_expire)()
    return await call, released


def test_a_slow_call_renews_its_lease_so_expiry_never_releases_it(tenant_admin, settings):
    settings.RESERVATION_LEASE_SECONDS = 0.6  # renewed every 0.2 s while the call runs
    settings.OFFLINE_PROVIDER_LATENCY_MS = 2000
    response, released = asyncio.run(_call_while_expiry_runs(tenant_admin, expire_after=1.4))
    assert response.status_code == 200, response.text
    assert released == 0
    log = UsageLog.objects.get()
    assert log.status == "SUCCESS" and log.tokens_out > 0 and not log.settled_late
    assert_nothing_held()


def test_a_call_that_outlived_its_lease_is_charged_all_the_same(tenant_admin, settings, monkeypatch):
    settings.RESERVATION_LEASE_SECONDS = 0.6
    settings.OFFLINE_PROVIDER_LATENCY_MS = 1500

    def renewal_lost(**kwargs) -> bool:  # e.g. the worker was stuck: the lease ran out
        return False

    monkeypatch.setattr(services, "reservation_renew", renewal_lost)
    response, released = asyncio.run(_call_while_expiry_runs(tenant_admin, expire_after=1.0))
    assert response.status_code == 200, response.text
    assert released == 1  # expiry released the holds while the provider was still answering
    log = UsageLog.objects.get()
    body = response.json()
    assert log.settled_late and log.status == "SUCCESS"
    assert (log.tokens_in, log.tokens_out) == (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    tokens = UsageMeter.objects.filter(metric="TOKENS", window="MONTH", user__isnull=True, task__isnull=True).get()
    assert tokens.used == log.tokens_in + log.tokens_out  # charged, never free
    assert_nothing_held()


# --- item 7: task endpoints honour Idempotency-Key --------------------------------------------------


TASK_BODIES = {
    "/api/drafting/": {"disclosure": "A folding hinge with a hydraulic damper that closes softly. " * 3,
                       "sections": ["title", "abstract"]},
    "/api/diagrams/": {"description": "A hinge: a leaf, a pin, a damper connected in series.",
                       "kinds": ["flowchart"], "format": "mermaid"},
}


@pytest.mark.parametrize("path", TASK_BODIES)
def test_a_task_retry_with_the_same_idempotency_key_is_replayed_and_charged_once(tenant_admin, path):
    body = TASK_BODIES[path]
    first = tenant_admin.client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="task-retry-1")
    assert first.status_code == 200, first.content
    again = tenant_admin.client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="task-retry-1")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert again["X-Request-ID"] == first["X-Request-ID"] == first.json()["request_id"]
    assert UsageLog.objects.count() == 1  # charged once
    conflict = tenant_admin.client.post(path, {**body, "extra": "different"}, format="json",
                                        HTTP_IDEMPOTENCY_KEY="task-retry-1")
    assert_error(conflict, 409, "idempotency_conflict")
    assert UsageLog.objects.count() == 1
    assert_nothing_held()


def test_a_task_idempotency_key_belongs_to_its_tenant(tenant_admin, outsider):
    path, body = "/api/drafting/", TASK_BODIES["/api/drafting/"]
    assert tenant_admin.client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="shared").status_code == 200
    other = outsider.client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    assert other.status_code == 200 and other.get("Idempotent-Replayed") is None
    assert other.json()["request_id"] != UsageLog.objects.filter(tenant=tenant_admin.tenant).get().request_id
    assert UsageLog.objects.count() == 2


def test_a_task_stream_with_an_idempotency_key_is_refused_before_admission(tenant_admin):
    r = tenant_admin.client.post("/api/drafting/?stream=1", TASK_BODIES["/api/drafting/"], format="json",
                                 HTTP_IDEMPOTENCY_KEY="k")
    assert_error(r, 400, "invalid_idempotency_key")
    assert not UsageReservation.objects.exists()
