"""The product's own clients, end to end (issue 13, "done when"): a tenant admin creates a service key
over the API; with it the `openai` SDK makes a streamed tool-calling call and a streamed JSON-schema
call, and the `anthropic` SDK a plain and a streamed Messages call, against real uvicorn workers
(two processes) with OpenAI and Anthropic behind them as loopback fakes that report prompt-cache
hits. Every call is in the ledger under that key with the provider's reported tokens and a cost
equal to the provider's price sheet applied to them (cached tokens at the cached rate). Revoking the
key stops the next call in every worker."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from metering.models import UsageLog
from metering.services import meters_reconcile, policy_rule_set
from tenants.tokens import tokens_for_user
from tests.conftest import require_postgres
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.integration.gateway_server import gateway_server

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TASK = "LLM1_PRIOR_ART"
# The providers' published price sheets, micro-USD per million tokens (not read from our catalog).
PRICE_SHEET = {
    "gpt-4o-mini": {"input": 150_000, "cached": 75_000, "cache_write": 150_000, "output": 600_000},
    "claude-haiku-4-5": {"input": 1_000_000, "cached": 100_000, "cache_write": 1_250_000, "output": 5_000_000},
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLAIM_SCHEMA = {"type": "json_schema", "json_schema": {"name": "claim", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["preamble", "elements"],
    "properties": {"preamble": {"type": "string"}, "elements": {"type": "array", "items": {"type": "string"}}}}}}
PROMPT = "Summarise the independent claim of a folding hinge with a self-locking detent for drawing boards."


def price(model: str, *, uncached: int, cached: int, cache_write: int, output: int) -> int:
    sheet = PRICE_SHEET[model]
    total = (uncached * sheet["input"] + cached * sheet["cached"] + cache_write * sheet["cache_write"]
             + output * sheet["output"])
    return -(-total // 1_000_000)  # providers bill fractions of a micro-dollar up


def test_a_service_key_drives_both_sdks_metered_exactly_and_revoking_it_stops_every_worker(tenant_admin):
    require_postgres()
    openai_fake, anthropic_fake = FakeOpenAI(), FakeAnthropic()
    openai_fake.cached_tokens = 8
    anthropic_fake.cached_tokens, anthropic_fake.cache_write_tokens = 6, 4
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_concurrent", value=100)
    env = {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": openai_fake.url + "/v1",
           "ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": anthropic_fake.url,
           "CELERY_TASK_ALWAYS_EAGER": "true", "PROVIDER_TIMEOUT_SECONDS": "10"}
    admin = {"Authorization": f"Bearer {tokens_for_user(tenant_admin.user)['access']}"}
    try:
        with gateway_server(workers=2, **env) as server:
            created = httpx.post(f"{server.url}/api/keys/", json={"name": "drafting-backend"}, headers=admin,
                                 timeout=30)
            assert created.status_code == 201, created.text
            key_id, secret = created.json()["id"], created.json()["key"]
            assert secret.startswith("gw_live_")
            oai = openai.OpenAI(base_url=f"{server.url}/v1/{TASK}", api_key=secret, max_retries=0)
            ant = anthropic.Anthropic(base_url=f"{server.url}/v1/{TASK}", api_key=secret, max_retries=0)

            # openai: a streamed tool call, assembled from OpenAI's deltas as the SDK hands them over
            name, arguments, tool_usage, finish = "", "", None, None
            for chunk in oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Munich?"}],
                    tools=[WEATHER_TOOL], tool_choice="required", stream=True,
                    stream_options={"include_usage": True}):
                if chunk.usage is not None:
                    tool_usage = chunk.usage
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    for call in choice.delta.tool_calls or []:
                        name += call.function.name or ""
                        arguments += call.function.arguments or ""
            assert name == "get_weather" and finish == "tool_calls"
            assert "city" in json.loads(arguments)

            # openai: a streamed answer held to a JSON schema
            text, schema_usage = "", None
            for chunk in oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}],
                    response_format=CLAIM_SCHEMA, stream=True, stream_options={"include_usage": True}):
                if chunk.usage is not None:
                    schema_usage = chunk.usage
                text += "".join(choice.delta.content or "" for choice in chunk.choices)
            claim = json.loads(text)
            assert set(claim) == {"preamble", "elements"} and isinstance(claim["elements"], list)

            # anthropic: a plain and a streamed Messages call
            plain = ant.messages.create(model="claude-haiku-4-5", max_tokens=60,
                                        messages=[{"role": "user", "content": PROMPT}])
            assert plain.content[0].type == "text" and plain.content[0].text
            with ant.messages.stream(model="claude-haiku-4-5", max_tokens=60,
                                     messages=[{"role": "user", "content": PROMPT}]) as stream:
                streamed_text = "".join(stream.text_stream)
                streamed = stream.get_final_message()
            assert streamed_text == "".join(block.text for block in streamed.content if block.type == "text")

            # revoking the key: the next call to either worker, by either SDK, is refused
            revoked = httpx.delete(f"{server.url}/api/keys/{key_id}/", headers=admin, timeout=30)
            assert revoked.status_code == 204, revoked.text
            for _ in range(3):  # uvicorn spreads connections over both workers
                with pytest.raises(openai.AuthenticationError):
                    oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                with pytest.raises(anthropic.AuthenticationError):
                    ant.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                        messages=[{"role": "user", "content": "hi"}])
    finally:
        openai_fake.close()
        anthropic_fake.close()

    rows = list(UsageLog.objects.filter(api_key_id=key_id).order_by("admitted_at", "id"))
    assert [(r.model_name, r.status) for r in rows] == [("gpt-4o-mini", "SUCCESS")] * 2 + [
        ("claude-haiku-4-5", "SUCCESS")] * 2
    assert {r.tenant_id for r in rows} == {tenant_admin.tenant.pk}

    for row, usage in zip(rows[:2], (tool_usage, schema_usage), strict=True):
        cached = usage.prompt_tokens_details.cached_tokens
        assert cached == 8
        assert (row.tokens_in, row.tokens_out, row.tokens_cached_in) == (
            usage.prompt_tokens, usage.completion_tokens, cached)
        assert row.cost_micro_usd == price("gpt-4o-mini", uncached=usage.prompt_tokens - cached, cached=cached,
                                           cache_write=0, output=usage.completion_tokens)
    for row, message in zip(rows[2:], (plain, streamed), strict=True):
        usage = message.usage
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (6, 4)
        prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        assert (row.tokens_in, row.tokens_out, row.tokens_cached_in, row.tokens_cache_write) == (
            prompt, usage.output_tokens, 6, 4)
        assert row.cost_micro_usd == price("claude-haiku-4-5", uncached=usage.input_tokens, cached=6, cache_write=4,
                                           output=usage.output_tokens)
    # what the fakes billed is what the ledger holds, and no hold is left behind
    assert sum(r.tokens_out for r in rows) == (sum(b[2] for b in openai_fake.billed)
                                               + sum(b[2] for b in anthropic_fake.billed))
    assert not UsageLog.objects.filter(api_key_id=key_id).exclude(status="SUCCESS").exists()
    assert meters_reconcile() == []
