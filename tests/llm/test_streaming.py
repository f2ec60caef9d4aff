"""Streaming through the metered API: OpenAI's chunk format, usage chunk, exact metering,
stream/non-stream parity, and max_tokens enforced on streams."""

from __future__ import annotations

import json

import pytest

from metering.models import UsageLog, UsageMeter
from metering.services import meters_reconcile

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Describe a self-cleaning solar panel with a rotating brush."}]


def events(response) -> list:
    assert response["Content-Type"] == "text/event-stream"
    raw = b"".join(response).decode()
    lines = [line.removeprefix("data: ") for line in raw.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def stream(persona, body: dict, task: str = "LLM2_DRAFT"):
    return persona.client.post(f"/v1/{task}/chat/completions", {**body, "stream": True}, format="json")


def test_stream_sends_openai_chunks_and_a_final_usage_chunk(tenant_admin):
    response = stream(tenant_admin, {"messages": MESSAGES, "max_tokens": 200,
                                     "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response["X-Request-ID"].startswith("req_")
    chunks = events(response)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["stop"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    log = UsageLog.objects.get()
    assert (log.status, log.tokens_in, log.tokens_out) == (
        "SUCCESS", usage["prompt_tokens"], usage["completion_tokens"])
    assert log.tokens_out == len(text.split())  # the offline provider writes one token per word
    assert not log.usage_estimated  # the provider reported usage on its stream
    assert meters_reconcile() == []
    assert UsageMeter.objects.filter(reserved__gt=0).count() == 0


def test_stream_without_include_usage_has_no_usage_chunk_but_is_metered(tenant_admin):
    chunks = events(stream(tenant_admin, {"messages": MESSAGES}))
    assert all("usage" not in c for c in chunks)
    log = UsageLog.objects.get()
    assert log.tokens_out > 0 and log.cost_micro_usd > 0


def test_streamed_and_non_streamed_calls_are_metered_the_same(tenant_admin):
    body = {"model": "PRO_M", "messages": MESSAGES, "max_tokens": 200}
    plain = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", body, format="json")
    assert plain.status_code == 200
    events(stream(tenant_admin, {**body, "stream_options": {"include_usage": True}}))
    first, second = UsageLog.objects.order_by("id")
    assert (first.tokens_in, first.tokens_out, first.cost_micro_usd, first.model_name) == (
        second.tokens_in, second.tokens_out, second.cost_micro_usd, second.model_name)


def test_max_tokens_is_enforced_on_streams(tenant_admin):
    chunks = events(stream(tenant_admin, {"messages": MESSAGES, "max_tokens": 5,
                                          "stream_options": {"include_usage": True}}))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len(text.split()) == 5
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["length"]
    assert UsageLog.objects.get().tokens_out == 5


def test_a_provider_failure_mid_stream_is_reported_in_band_and_charged(tenant_admin):
    chunks = events(stream(tenant_admin, {"messages": [{"role": "user", "content": "x [offline:fail] y"}],
                                          "max_tokens": 40}))
    assert chunks[-1]["error"]["code"] == "provider_overloaded"
    log = UsageLog.objects.get()
    assert log.status == "ERROR" and log.tokens_out > 0
    assert meters_reconcile() == []


def test_a_refused_stream_is_a_plain_json_error(tenant_admin):
    from catalog.models import Task
    from metering.services import policy_rule_set

    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day", value=1,
                    task=Task.objects.get(code="LLM2_DRAFT"))
    response = stream(tenant_admin, {"messages": MESSAGES})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
