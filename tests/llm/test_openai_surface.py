"""The whole OpenAI chat request through the real `openai` SDK against the gateway (issue 13 §2), with
each real provider behind it reached through its own SDK against its loopback fake: tool calls plain
and streamed, tool results sent back, JSON schema output, n > 1 metered as n completions, and every
parameter a provider cannot honour refused with a 400 before anything is held."""

from __future__ import annotations

import base64
import json

import httpx2
import openai
import pytest

from metering.models import UsageLog, UsageMeter, UsageReservation
from metering.services import meters_reconcile, policy_rule_set
from tenants.tokens import tokens_for_user
from tests.asgi_client import SdkTransport

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM1_PRIOR_ART"  # PRO: BASE_S (gpt-4o-mini) and BASE_M (gemini-2.5-flash, grok-3-mini, claude-haiku-4-5)
MODELS = {"openai": "gpt-4o-mini", "grok": "grok-3-mini", "gemini": "gemini-2.5-flash",
          "anthropic": "claude-haiku-4-5"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
EXPECTED_ARGS = {"city": "fake", "days": 7}  # what the fakes' model builds from the schema
CLAIMS = {"name": "claims", "schema": {"type": "object", "properties": {
    "title": {"type": "string"}, "claims": {"type": "array", "items": {"type": "integer"}}}}}
PIXEL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-a-png").decode()






@pytest.fixture
def sdk(tenant_admin) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://testserver/v1/{TASK}", api_key=tokens_for_user(tenant_admin.user)["access"],
                         max_retries=0, http_client=httpx2.Client(transport=SdkTransport()))


def billed(server) -> tuple[int, int]:
    server.wait_idle()
    return sum(b[1] for b in server.billed), sum(b[2] for b in server.billed)


def ledger_matches(server) -> None:
    logs = UsageLog.objects.filter(status="SUCCESS")
    assert (sum(log.tokens_in for log in logs), sum(log.tokens_out for log in logs)) == billed(server)
    assert meters_reconcile() == []


def assert_nothing_held() -> None:
    assert not UsageReservation.objects.exists()
    assert not UsageMeter.objects.exclude(reserved=0).exists()
    assert not UsageLog.objects.exclude(status="REFUSED").exists()


def last_body(server) -> dict:
    server.wait_idle()
    return server.received[-1].body


ASK = [{"role": "user", "content": "What will the weather be in Paris? Use get_weather."}]


# --- tool calls ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_tool_call_comes_back_in_openai_shape_from_every_provider(fakes, sdk, provider):
    completion = sdk.chat.completions.create(model=MODELS[provider], messages=ASK, tools=[WEATHER],
                                             tool_choice="required", max_tokens=64)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == EXPECTED_ARGS
    assert choice.message.content is None
    sent = last_body(fakes[provider])
    if provider in ("openai", "grok"):
        assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required"
    elif provider == "gemini":
        (declaration,) = sent["tools"][0]["functionDeclarations"]
        assert declaration["name"] == "get_weather"
        # proto JSON takes the field's proto name too, which google-genai sends for the JSON-schema fields
        schema = declaration.get("parametersJsonSchema") or declaration.get("parameters_json_schema")
        assert schema == WEATHER["function"]["parameters"]
        assert sent["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"
    else:
        assert sent["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                  "input_schema": WEATHER["function"]["parameters"]}]
        assert sent["tool_choice"] == {"type": "any"}
    ledger_matches(fakes[provider])


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_streamed_tool_call_arrives_as_openai_streams_it(fakes, sdk, provider):
    stream = sdk.chat.completions.create(model=MODELS[provider], messages=ASK, tools=[WEATHER],
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                         max_tokens=64, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    first = pieces[0]
    assert first.index == 0 and first.id and first.function.name == "get_weather"
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    assert json.loads("".join(p.function.arguments or "" for p in pieces)) == EXPECTED_ARGS
    log = UsageLog.objects.get()
    assert (usage.prompt_tokens, usage.completion_tokens) == (log.tokens_in, log.tokens_out)
    assert not log.usage_estimated
    ledger_matches(fakes[provider])


@pytest.mark.parametrize("provider", list(MODELS))
def test_tool_results_go_back_to_each_provider_in_its_own_format(fakes, sdk, provider):
    first = sdk.chat.completions.create(model=MODELS[provider], messages=ASK, tools=[WEATHER],
                                        tool_choice="required", max_tokens=64)
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"}]
    second = sdk.chat.completions.create(model=MODELS[provider], messages=history, tools=[WEATHER], max_tokens=64)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    sent = last_body(fakes[provider])
    if provider in ("openai", "grok"):
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"}
    elif provider == "gemini":
        model_turn, answer_turn = sent["contents"][1], sent["contents"][2]
        assert model_turn["role"] == "model"
        assert model_turn["parts"][0]["functionCall"]["name"] == "get_weather"
        assert model_turn["parts"][0]["functionCall"]["args"] == EXPECTED_ARGS
        assert answer_turn["role"] == "user"
        response = answer_turn["parts"][0]["functionResponse"]
        assert response["name"] == "get_weather" and response["response"] == {"result": "Sunny, 24 degrees"}
    else:
        assistant, user = sent["messages"][1], sent["messages"][2]
        assert assistant["content"] == [{"type": "tool_use", "id": call.id, "name": "get_weather",
                                         "input": EXPECTED_ARGS}]
        assert user == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                     "content": "Sunny, 24 degrees"}]}
    ledger_matches(fakes[provider])


def test_a_tool_message_without_its_call_is_a_400(fakes, sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gpt-4o-mini", max_tokens=64, messages=[
            *ASK, {"role": "tool", "tool_call_id": "call_nowhere", "content": "Sunny"}])
    assert refused.value.body["code"] == "invalid_messages"
    assert_nothing_held()


# --- structured output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_json_schema_output_from_every_provider(fakes, sdk, provider):
    completion = sdk.chat.completions.create(
        model=MODELS[provider], max_tokens=64, messages=[{"role": "user", "content": "Draft a claim set."}],
        response_format={"type": "json_schema", "json_schema": CLAIMS})
    assert json.loads(completion.choices[0].message.content) == {"title": "fake", "claims": [7]}
    sent = last_body(fakes[provider])
    if provider in ("openai", "grok"):
        assert sent["response_format"] == {"type": "json_schema", "json_schema": CLAIMS}
    elif provider == "gemini":
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
        config = sent["generationConfig"]
        assert (config.get("responseJsonSchema") or config.get("response_json_schema")) == CLAIMS["schema"]
    else:
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": CLAIMS["schema"]}}
    ledger_matches(fakes[provider])


@pytest.mark.parametrize("provider", ["gemini", "anthropic"])
def test_sampling_and_stop_parameters_are_mapped(fakes, sdk, provider):
    extra = {"stop": ["END"], "user": "u-42"} if provider == "anthropic" else {
        "stop": ["END"], "top_p": 0.5, "seed": 3, "presence_penalty": 0.1, "frequency_penalty": 0.2}
    sdk.chat.completions.create(model=MODELS[provider], max_tokens=64, messages=ASK, **extra)
    sent = last_body(fakes[provider])
    if provider == "gemini":
        config = sent["generationConfig"]
        assert (config["stopSequences"], config["topP"], config["seed"], config["presencePenalty"],
                config["frequencyPenalty"]) == (["END"], 0.5, 3, 0.1, 0.2)
    else:
        assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "u-42"}


def test_images_become_each_providers_image_part(fakes, sdk):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in the figure?"},
                                             {"type": "image_url", "image_url": {"url": PIXEL}}]}]
    for provider in ("openai", "gemini", "anthropic"):
        sdk.chat.completions.create(model=MODELS[provider], max_tokens=32, messages=messages)
    assert last_body(fakes["openai"])["messages"] == messages
    (_, image) = last_body(fakes["gemini"])["contents"][0]["parts"]
    assert (image["inlineData"].get("mimeType") or image["inlineData"].get("mime_type")) == "image/png"
    assert base64.b64decode(image["inlineData"]["data"]) == base64.b64decode(PIXEL.partition(",")[2])
    blocks = last_body(fakes["anthropic"])["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": PIXEL.partition(",")[2]}}


# --- n > 1 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_n_completions_are_metered_as_n(fakes, sdk, provider):
    completion = sdk.chat.completions.create(model=MODELS[provider], n=2, max_tokens=64,
                                             messages=[{"role": "user", "content": "Name a patent office."}])
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].message.content != completion.choices[1].message.content
    log = UsageLog.objects.get()
    assert completion.usage.completion_tokens == log.tokens_out == billed(fakes[provider])[1]
    assert log.tokens_out == sum(len(c.message.content.split()) for c in completion.choices)
    ledger_matches(fakes[provider])


def test_n_completions_are_held_at_n_times_the_worst_case(fakes, sdk, tenant_admin):
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    # Room for one worst case (a few input tokens + 100 out) but not for two.
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day", value=150)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(n=2, **body)
    assert refused.value.body["code"] == "quota_exceeded"
    assert fakes["openai"].received == []
    assert sdk.chat.completions.create(n=1, **body).choices[0].message.content


# --- refusals ------------------------------------------------------------------------------------------

REFUSED = [  # (provider, extra request fields, the parameter the 400 names)
    ("anthropic", {"top_p": 0.9}, "top_p"),
    ("anthropic", {"seed": 1}, "seed"),
    ("anthropic", {"n": 2}, "n"),
    ("anthropic", {"presence_penalty": 0.5}, "presence_penalty"),
    ("anthropic", {"frequency_penalty": 0.5}, "frequency_penalty"),
    ("anthropic", {"logprobs": True}, "logprobs"),
    ("anthropic", {"metadata": {"run": "7"}}, "metadata"),
    ("gemini", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ("gemini", {"user": "u-1"}, "user"),
    ("gemini", {"metadata": {"run": "7"}}, "metadata"),
    ("gemini", {"tools": [WEATHER], "parallel_tool_calls": False}, "parallel_tool_calls=false"),
    ("gemini", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/figure.png"}}]}]}, "image_url"),
]


@pytest.mark.parametrize(("provider", "extra", "named"), REFUSED, ids=[f"{p}-{n}" for p, _, n in REFUSED])
def test_a_parameter_the_provider_cannot_honour_is_a_400_before_any_hold(fakes, sdk, provider, extra, named):
    body = {"model": MODELS[provider], "max_tokens": 32, "messages": ASK, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**body)
    error = refused.value.body
    assert error["code"] == "unsupported_parameter"
    assert named in error["message"] and provider in error["message"]
    assert fakes[provider].received == []
    assert_nothing_held()


def test_fallback_drops_the_candidates_that_cannot_serve_the_request(fakes, sdk, settings):
    from llm.providers import registry

    # Only Anthropic and Gemini are configured: a seed rules Anthropic out, so Gemini serves.
    settings.OPENAI_API_KEY = settings.GROK_API_KEY = None
    registry.clear_local()
    completion = sdk.chat.completions.create(model="BASE_M", seed=5, max_tokens=32, messages=ASK)
    assert completion.model == "gemini-2.5-flash"
    assert fakes["anthropic"].received == []
    # Neither takes logprobs: a 400 naming both, nothing held.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="BASE_M", logprobs=True, max_tokens=32, messages=ASK)
    message = refused.value.body["message"]
    assert "logprobs" in message and "gemini" in message and "anthropic" in message
    assert UsageLog.objects.count() == 1 and not UsageMeter.objects.exclude(reserved=0).exists()


@pytest.mark.parametrize(("extra", "code", "named"), [
    ({"frobnicate": True}, "unknown_parameter", "frobnicate"),
    ({"logit_bias": {"50256": -100}}, "unsupported_parameter", "logit_bias"),
    ({"functions": [{"name": "f"}]}, "unsupported_parameter", "functions"),
    ({"stream": True, "stream_options": {"include_usage": True, "chunky": 1}}, "unknown_parameter", "chunky"),
    ({"stream": True, "n": 2}, "unsupported_parameter", "'n'"),
    ({"tool_choice": "required"}, "invalid_tool_choice", "tools"),
    ({"n": 9}, "invalid_n", "'n'"),
])
def test_unknown_and_unsupported_fields_are_a_400_naming_them(fakes, sdk, extra, code, named):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gpt-4o-mini", max_tokens=32, messages=ASK, extra_body=extra)
    assert refused.value.body["code"] == code and named in refused.value.body["message"]
    assert fakes["openai"].received == []
    assert_nothing_held()


# --- the offline provider (the embedded default) -------------------------------------------------------


@pytest.fixture
def offline_sdk(tenant_admin) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://testserver/v1/{TASK}", api_key=tokens_for_user(tenant_admin.user)["access"],
                         max_retries=0, http_client=httpx2.Client(transport=SdkTransport()))


def test_offline_shows_tool_calls_json_and_n(offline_sdk):
    called = offline_sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER])
    (call,) = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "offline", "days": 1}
    again = offline_sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER])
    assert again.choices[0].message.tool_calls[0].id == call.id  # deterministic
    history = [*ASK, called.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}]
    answered = offline_sdk.chat.completions.create(model="auto", messages=history, tools=[WEATHER])
    assert answered.choices[0].finish_reason in ("stop", "length") and answered.choices[0].message.content

    structured = offline_sdk.chat.completions.create(model="auto", messages=ASK,
                                                     response_format={"type": "json_schema", "json_schema": CLAIMS})
    assert json.loads(structured.choices[0].message.content) == {"title": "offline", "claims": [1]}
    two = offline_sdk.chat.completions.create(model="auto", messages=ASK, n=2)
    assert len(two.choices) == 2 and two.choices[0].message.content != two.choices[1].message.content

    stream = offline_sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER], stream=True)
    pieces = [p for chunk in stream for c in chunk.choices for p in (c.delta.tool_calls or [])]
    assert pieces[0].id == call.id and pieces[0].function.name == "get_weather"
    assert "".join(p.function.arguments or "" for p in pieces) == call.function.arguments
    assert meters_reconcile() == []


def test_offline_refuses_what_it_cannot_do(offline_sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        offline_sdk.chat.completions.create(model="auto", messages=ASK, logprobs=True)
    assert refused.value.body["code"] == "unsupported_parameter" and "offline" in refused.value.body["message"]
    assert_nothing_held()
