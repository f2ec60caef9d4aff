"""Anthropic's Messages API on the gateway (issue 13 §3), through the real `anthropic` SDK:
`anthropic.Anthropic(base_url="http://host/v1/{TASK}", ...)` against the gateway's ASGI application
in-process (the path uvicorn serves), with each real provider behind it reached through its own SDK
against its loopback fake. Plain and streamed answers, tool use, errors in Anthropic's shape, the
ledger row exact, a cancelled stream settled, and the credential in either header."""

from __future__ import annotations

import json

import anthropic
import httpx2
import pytest
from asgiref.sync import async_to_sync

from catalog.models import Plan, PlanLLMAccess, Task
from llm import anthropic_messages
from metering.models import UsageLog, UsageMeter, UsageReservation
from metering.services import meters_reconcile, policy_rule_set
from tenants.tokens import tokens_for_user
from tests.asgi_client import GatewayClient, SdkTransport
from tests.conftest import Persona, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM1_PRIOR_ART"  # PRO: BASE_S (gpt-4o-mini) and BASE_M (gemini-2.5-flash, grok-3-mini, claude-haiku-4-5)
MODELS = {"openai": "gpt-4o-mini", "grok": "grok-3-mini", "gemini": "gemini-2.5-flash",
          "anthropic": "claude-haiku-4-5"}
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city"]}}
QUESTION = [{"role": "user", "content": "What is a patent family?"}]






def sdk(persona, *, task: str = TASK, header: str = "auth_token") -> anthropic.Anthropic:
    token = tokens_for_user(persona.user)["access"]
    credential = {"auth_token": token} if header == "auth_token" else {"api_key": token}
    return anthropic.Anthropic(base_url=f"http://testserver/v1/{task}", max_retries=0,
                               http_client=httpx2.Client(transport=SdkTransport()), **credential)


def no_holds() -> None:
    assert not UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).exists()
    assert not UsageMeter.objects.exclude(reserved=0).exists()
    assert meters_reconcile() == []


# --- plain ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_plain_message_from_any_provider_is_metered_exactly(fakes, tenant_admin, provider):
    message = sdk(tenant_admin).messages.create(model=MODELS[provider], max_tokens=64, messages=QUESTION,
                                                system="You draft patents.")
    assert message.type == "message" and message.role == "assistant" and message.model == MODELS[provider]
    assert message.stop_reason == "end_turn"
    (block,) = message.content
    assert block.type == "text" and block.text
    log = UsageLog.objects.get()
    assert (log.provider, log.model_name, log.status) == (provider, MODELS[provider], "SUCCESS")
    assert message.id == f"msg_{log.request_id}"
    # The answer's usage is the ledger's: input (all prompt tokens, none cached here) and output.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (log.tokens_in, log.tokens_out)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)
    fake = fakes[provider]
    fake.wait_idle()
    assert [(b[1], b[2]) for b in fake.billed] == [(log.tokens_in, log.tokens_out)]
    from catalog.selectors import provider_models_active

    model = next(m for m in provider_models_active() if m.model_name == MODELS[provider])
    assert log.cost_micro_usd == model.cost_micro_usd(tokens_in=log.tokens_in, tokens_out=log.tokens_out) > 0
    # The system prompt reached the provider.
    assert "You draft patents." in json.dumps(fake.received[-1].body)
    no_holds()


def test_the_credential_in_x_api_key_or_from_api_key_works(fakes, tenant_admin):
    token = tokens_for_user(tenant_admin.user)["access"]
    # SDK 2.x sends api_key= as a bearer token; other clients (and SDK 1.x) send it as x-api-key.
    transport = SdkTransport()
    client = anthropic.Anthropic(base_url=f"http://testserver/v1/{TASK}", max_retries=0, api_key=token,
                                 http_client=httpx2.Client(transport=transport))
    assert client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=QUESTION).content[0].text
    (sent,) = transport.requests
    assert sent.url.path == f"/v1/{TASK}/v1/messages"
    raw = GatewayClient().post(f"/v1/{TASK}/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 32,
                                                          "messages": QUESTION}, format="json",
                               headers={"x-api-key": token, "anthropic-version": "2023-06-01"})
    assert raw.status_code == 200, raw.content
    assert raw.json()["content"][0]["type"] == "text"
    assert list(UsageLog.objects.values_list("user_id", flat=True)) == [tenant_admin.user.pk] * 2


def test_a_service_key_works_in_either_header_and_is_in_the_ledger(fakes, tenant_admin):
    from tenants.services import api_key_create, api_key_revoke

    issued = api_key_create(tenant=tenant_admin.tenant, name="drafting backend")
    assert issued.secret.startswith("gw_")
    client = anthropic.Anthropic(base_url=f"http://testserver/v1/{TASK}", api_key=issued.secret, max_retries=0,
                                 http_client=httpx2.Client(transport=SdkTransport()))
    plain = client.messages.create(model="gpt-4o-mini", max_tokens=32, messages=QUESTION)
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=QUESTION) as stream:
        streamed = stream.get_final_message()
    raw = GatewayClient().post(f"/v1/{TASK}/messages", {"model": "gemini-2.5-flash", "max_tokens": 32,
                                                       "messages": QUESTION}, format="json",
                               headers={"x-api-key": issued.secret})
    assert raw.status_code == 200, raw.content
    logs = list(UsageLog.objects.order_by("id"))
    assert [log.api_key_id for log in logs] == [issued.api_key.pk] * 3
    assert [log.status for log in logs] == ["SUCCESS"] * 3
    assert (logs[0].tokens_in, logs[0].tokens_out) == (plain.usage.input_tokens, plain.usage.output_tokens)
    assert (logs[1].tokens_in, logs[1].tokens_out) == (streamed.usage.input_tokens, streamed.usage.output_tokens)
    api_key_revoke(api_key=issued.api_key)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="gpt-4o-mini", max_tokens=32, messages=QUESTION)
    no_holds()


def test_the_path_without_the_sdk_prefix_and_the_django_view_serve_it_too(fakes, tenant_admin):
    body = {"model": "gpt-4o-mini", "max_tokens": 32, "messages": QUESTION}
    fast = tenant_admin.client.post(f"/v1/{TASK}/messages", body, format="json")
    django = tenant_admin.django_client.post(f"/v1/{TASK}/v1/messages", body, format="json")
    for response in (fast, django):
        assert response.status_code == 200, response.content
        assert response.json()["type"] == "message"
    assert UsageLog.objects.filter(status="SUCCESS").count() == 2


def test_cached_prompt_tokens_come_back_in_anthropic_usage_and_are_priced_so(fakes, tenant_admin):
    fakes["anthropic"].cached_tokens, fakes["anthropic"].cache_write_tokens = 6, 2
    message = sdk(tenant_admin).messages.create(model="claude-haiku-4-5", max_tokens=32, messages=QUESTION)
    log = UsageLog.objects.get()
    assert (log.tokens_cached_in, log.tokens_cache_write) == (6, 2)
    assert message.usage.cache_read_input_tokens == 6 and message.usage.cache_creation_input_tokens == 2
    assert message.usage.input_tokens == log.tokens_in - 8  # Anthropic's input_tokens exclude the cache parts
    # claude-haiku-4-5: $1 input, $0.10 cache read, $1.25 cache write, $5 output per MTok (rounded up once).
    numerator = (log.tokens_in - 8) * 1_000_000 + 6 * 100_000 + 2 * 1_250_000 + log.tokens_out * 5_000_000
    assert log.cost_micro_usd == -(-numerator // 1_000_000)


# --- streamed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_streamed_message_events_and_final_usage_match_the_ledger(fakes, tenant_admin, provider):
    with sdk(tenant_admin).messages.stream(model=MODELS[provider], max_tokens=64, messages=QUESTION) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason == "end_turn"
    log = UsageLog.objects.get()
    assert (log.provider, log.status, log.usage_estimated) == (provider, "SUCCESS", False)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (log.tokens_in, log.tokens_out)
    plain = sdk(tenant_admin).messages.create(model=MODELS[provider], max_tokens=64, messages=QUESTION)
    assert plain.content[0].text == final.content[0].text
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (log.tokens_in, log.tokens_out)
    no_holds()


def test_raw_stream_is_anthropics_event_sequence(fakes, tenant_admin):
    response = tenant_admin.client.post(f"/v1/{TASK}/v1/messages", {
        "model": "gpt-4o-mini", "max_tokens": 32, "messages": QUESTION, "stream": True}, format="json")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    raw = b"".join(response).decode()
    events = [(chunk.split("\n")[0].removeprefix("event: "), json.loads(chunk.split("\n")[1].removeprefix("data: ")))
              for chunk in raw.strip().split("\n\n")]
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    delta = dict(events)["message_delta"]
    log = UsageLog.objects.get()
    assert delta["usage"] == {"input_tokens": log.tokens_in, "output_tokens": log.tokens_out,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert response["X-Request-ID"] == log.request_id


def test_a_stream_the_client_leaves_is_settled_as_cancelled(fakes, tenant_admin):
    headers = {"authorization": f"Bearer {tokens_for_user(tenant_admin.user)['access']}"}
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 200, "stream": True,
                       "messages": [{"role": "user", "content": "Write a long description of a hinge."}]}).encode()

    async def leave_early() -> bytes:
        result = await anthropic_messages.messages_endpoint(method="POST", headers=headers, body=body,
                                                            task_code=TASK)
        assert result.status == 200 and result.events is not None
        first = await result.events.__anext__()
        await result.events.aclose()  # what the ASGI server does when the client goes away
        return first

    first = async_to_sync(leave_early)()
    assert first.startswith(b"event: message_start")
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("CANCELLED", "client_disconnected")
    assert log.tokens_in > 0  # what the provider had read is charged
    no_holds()


# --- tools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_tool_use_and_tool_result_round_trip(fakes, tenant_admin, provider):
    client = sdk(tenant_admin)
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    message = client.messages.create(model=MODELS[provider], max_tokens=64, messages=asked, tools=[WEATHER],
                                     tool_choice={"type": "any"})
    assert message.stop_reason == "tool_use"
    (call,) = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    answer = client.messages.create(model=MODELS[provider], max_tokens=64, tools=[WEATHER], messages=[
        *asked, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]}])
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    # The tool result went to the provider.
    assert "Sunny, 21 C" in json.dumps(fakes[provider].received[-1].body)
    assert UsageLog.objects.filter(status="SUCCESS").count() == 2
    no_holds()


def test_streamed_tool_use_arrives_as_input_json_deltas(fakes, tenant_admin):
    with sdk(tenant_admin).messages.stream(model="claude-haiku-4-5", max_tokens=64, tools=[WEATHER],
                                           tool_choice={"type": "tool", "name": "get_weather"},
                                           messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    (call,) = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and "city" in call.input
    assert final.stop_reason == "tool_use"
    no_holds()


# --- errors --------------------------------------------------------------------------------------


def _refused(excinfo, status: int, kind: str) -> dict:
    error = excinfo.value
    assert error.status_code == status
    assert error.body == {"type": "error", "error": {"type": kind, "message": error.body["error"]["message"]}}
    assert error.body["error"]["message"]
    return error.body


@pytest.mark.parametrize("body, says", [
    ({"model": "auto", "messages": QUESTION}, "max_tokens"),
    ({"model": "auto", "max_tokens": 10, "messages": []}, "messages"),
    ({"model": "auto", "max_tokens": 10, "messages": QUESTION, "top_k": 5}, "top_k"),
    ({"model": "auto", "max_tokens": 10, "messages": QUESTION, "thinking": {"type": "enabled"}}, "thinking"),
    ({"model": "auto", "max_tokens": 10, "messages": QUESTION, "frobnicate": 1}, "frobnicate"),
    ({"model": "auto", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     "document"),
    ({"model": "auto", "max_tokens": 10, "messages": QUESTION, "tools": [{"type": "web_search_20250305",
                                                                          "name": "web_search"}]}, "server tools"),
    ({"model": "auto", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "role"),
])
def test_bad_requests_are_invalid_request_errors_and_hold_nothing(fakes, tenant_admin, body, says):
    response = tenant_admin.client.post(f"/v1/{TASK}/v1/messages", body, format="json")
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert says in payload["error"]["message"]
    assert not UsageReservation.objects.exists()
    no_holds()


def test_sdk_sees_bad_request_error(fakes, tenant_admin):
    with pytest.raises(anthropic.BadRequestError) as excinfo:
        sdk(tenant_admin).messages.create(model="auto", max_tokens=0, messages=QUESTION)
    _refused(excinfo, 400, "invalid_request_error")


def test_quota_refusal_is_a_rate_limit_error_with_retry_after(fakes, tenant_admin):
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day", value=10)
    with pytest.raises(anthropic.RateLimitError) as excinfo:
        sdk(tenant_admin).messages.create(model="auto", max_tokens=64, messages=QUESTION)
    _refused(excinfo, 429, "rate_limit_error")
    assert int(excinfo.value.response.headers["retry-after"]) > 0
    assert excinfo.value.response.headers["x-gateway-error-code"] == "quota_exceeded"
    (log,) = UsageLog.objects.all()
    assert (log.status, log.error_code) == ("REFUSED", "quota_exceeded")
    no_holds()


def test_no_or_a_bad_credential_is_an_authentication_error(fakes, tenant_admin):
    client = anthropic.Anthropic(base_url=f"http://testserver/v1/{TASK}", api_key="not-a-token", max_retries=0,
                                 http_client=httpx2.Client(transport=SdkTransport()))
    with pytest.raises(anthropic.AuthenticationError) as excinfo:
        client.messages.create(model="auto", max_tokens=10, messages=QUESTION)
    _refused(excinfo, 401, "authentication_error")
    response = GatewayClient().post(f"/v1/{TASK}/v1/messages", {"model": "auto", "max_tokens": 10,
                                                               "messages": QUESTION}, format="json")
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert not UsageLog.objects.exists()


def test_outsiders_get_not_found_and_permission_errors(fakes, tenant_admin, outsider):
    with pytest.raises(anthropic.NotFoundError) as excinfo:
        sdk(tenant_admin, task="NO_SUCH_TASK").messages.create(model="auto", max_tokens=10, messages=QUESTION)
    _refused(excinfo, 404, "not_found_error")
    # A plan without the task (FREE has no drafting): not allowed, in Anthropic's shape, nothing run.
    tenant, admin = make_tenant("Free Filers", "free-admin", plan="FREE")
    assert not PlanLLMAccess.objects.filter(plan=Plan.objects.get(code="FREE"),
                                            task=Task.objects.get(code="LLM2_DRAFT")).exists()
    with pytest.raises(anthropic.PermissionDeniedError) as excinfo:
        sdk(Persona(user=admin, tenant=tenant), task="LLM2_DRAFT").messages.create(
            model="auto", max_tokens=10, messages=QUESTION)
    _refused(excinfo, 403, "permission_error")
    # Another tenant's call is that tenant's: it lands in its own ledger, never in ours.
    sdk(outsider).messages.create(model="gpt-4o-mini", max_tokens=10, messages=QUESTION)
    assert not UsageLog.objects.filter(tenant=tenant_admin.tenant).exists()
    assert UsageLog.objects.filter(tenant=outsider.tenant, status="SUCCESS").count() == 1


def test_all_providers_failing_is_an_api_error_and_settles(fakes, tenant_admin):
    for server in fakes.values():
        server.down = True
    with pytest.raises(anthropic.APIStatusError) as excinfo:
        sdk(tenant_admin).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=QUESTION)
    assert excinfo.value.status_code in (502, 503)
    assert excinfo.value.body["type"] == "error"
    assert excinfo.value.body["error"]["type"] in ("api_error", "overloaded_error")
    assert "127.0.0.1" not in json.dumps(excinfo.value.body)  # never the provider's text
    assert UsageLog.objects.get().status == "ERROR"
    no_holds()


# --- the fast path uvicorn serves ------------------------------------------------------------------


def test_messages_are_served_by_the_fast_path_without_django(tenant_admin):
    from django.core.signals import request_started

    seen: list[object] = []

    def count(sender, **kwargs) -> None:
        seen.append(sender)

    request_started.connect(count)
    try:
        response = tenant_admin.client.post("/v1/LLM2_DRAFT/v1/messages", {
            "model": "auto", "max_tokens": 30, "messages": QUESTION}, format="json")
    finally:
        request_started.disconnect(count)
    assert response.status_code == 200 and response.json()["type"] == "message"
    assert response["X-Content-Type-Options"] == "nosniff" and response["X-Frame-Options"] == "DENY"
    assert seen == []  # the offline provider (embedded default) served it, without Django's handler


def test_a_client_gone_mid_stream_on_the_fast_path_is_settled(tenant_admin, settings):
    import asyncio

    from tests.llm.test_asgi_fast_path import _exchange

    settings.OFFLINE_PROVIDER_LATENCY_MS = 4000  # a slow stream: ~40 words over 4 s
    token = tokens_for_user(tenant_admin.user)["access"]
    hang_up = asyncio.Event()

    async def scenario() -> list[dict]:
        exchange = asyncio.create_task(_exchange("/v1/LLM2_DRAFT/v1/messages", {
            "model": "auto", "max_tokens": 200, "stream": True, "messages": QUESTION}, token, hang_up=hang_up))
        await asyncio.sleep(0.6)
        hang_up.set()
        return await exchange

    messages = asyncio.run(scenario())
    assert messages[0]["status"] == 200
    received = b"".join(m.get("body", b"") for m in messages[1:])
    assert received.startswith(b"event: message_start") and b"text_delta" in received
    assert b"message_stop" not in received
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == ("CANCELLED", "client_disconnected")
    assert 0 < log.tokens_out < 200
    no_holds()
