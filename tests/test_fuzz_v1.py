"""Property-based tests of the metered API's input: whatever a client POSTs to /v1/{TASK}/chat/completions,
never a 5xx, every refusal in the one error shape, and no hold left behind.

The examples are shaped like the OpenAI chat request (model, messages with roles and string or part
contents, max_tokens, temperature, stream, stream_options, tools, response_format, ...), each with one or
two fields wrong, missing or nested thousands deep, mixed with any JSON and bytes that are no JSON. The
embedded offline provider answers the valid ones, so each of those is a whole admitted, settled call.
"""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog.models import Task
from metering.policy_keys import POLICY_KEYS, KeyKind, Subject
from metering.services import policy_rule_set
from tests.conftest import Persona
from tests.fuzz import (
    FUZZ,
    any_text,
    assert_no_holds,
    assert_well_formed,
    bodies,
    content_types,
    json_values,
    numbers,
    release_leftover_holds,
)

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
URL = f"/v1/{TASK}/chat/completions"
EXAMPLES = 150

MODELS = ["auto", "BASE_S", "BASE_M", "PRO_M", "PRO_L", "ADVANCED", "offline-pro-m", "no-such-model"]
ROLES = ["system", "user", "assistant", "tool", "developer", "function"]

short_text = st.text(st.characters(codec="utf-8"), max_size=60)
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(short_text, any_text)})
image_part = st.fixed_dictionaries({
    "type": st.just("image_url"),
    "image_url": st.fixed_dictionaries({"url": st.sampled_from(["https://example.com/a.png",
                                                                "data:image/png;base64,iVBORw0KGgo="])},
                                       optional={"detail": st.sampled_from(["auto", "low", "high"])}),
})
content = st.one_of(short_text, any_text, st.sampled_from(["\ud800", "a lone \udfff surrogate", "nul \x00"]),
                    st.lists(st.one_of(text_part, image_part), min_size=1, max_size=3))
tool_call = st.fixed_dictionaries({
    "id": st.text(st.characters(codec="ascii"), min_size=1, max_size=12), "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                                       "arguments": st.one_of(st.just("{}"), short_text)}),
})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES), "content": content},
    optional={"name": st.from_regex(r"[a-zA-Z0-9_-]{1,16}", fullmatch=True), "tool_call_id": short_text,
              "tool_calls": st.lists(tool_call, max_size=2)},
)
user_message = st.fixed_dictionaries({"role": st.just("user"), "content": content})
tool = st.fixed_dictionaries({
    "type": st.just("function"),
    "function": st.fixed_dictionaries(
        {"name": st.from_regex(r"[a-zA-Z_]{1,20}", fullmatch=True)},
        optional={"description": short_text, "strict": st.booleans(),
                  "parameters": st.one_of(st.just({"type": "object", "properties": {"x": {"type": "string"}}}),
                                          json_values)},
    ),
})
response_format = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
    st.fixed_dictionaries({"type": st.just("json_schema"),
                           "json_schema": st.fixed_dictionaries({"name": st.just("answer"),
                                                                 "schema": st.just({"type": "object"})})}),
)
probability = st.floats(min_value=0, max_value=1)

# Each field of the request: (a value OpenAI's API accepts, any value at all).
WIRE_VALUES = {
    "stream": ["yes", "true", 1, 0, "", None, [], {}],
    "stream_options": ["yes", True, 1, [], {"include_usage": "yes"}, {"include_usage": 1}, {"unknown": True}, None],
    "messages": [[], {}, "hi", [None], [{}], [{"role": "user"}], [{"content": "hi"}], [{"role": 1, "content": "x"}],
                 [{"role": "user", "content": {"text": "x"}}], [{"role": "user", "content": [{"type": "text"}]}],
                 [{"role": "user", "content": [{"type": "video", "text": "x"}]}], [{"role": "user", "content": 5}]],
}
FIELDS: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]] = {
    "model": (st.sampled_from(MODELS), st.one_of(any_text, json_values)),
    "messages": (st.lists(message, min_size=1, max_size=4).map(lambda m: m + [{"role": "user", "content": "Hi"}])
                 | st.lists(user_message, min_size=1, max_size=2),
                 st.one_of(st.sampled_from(WIRE_VALUES["messages"]), st.lists(json_values, max_size=3))),
    "max_tokens": (st.integers(1, 300), st.one_of(numbers, st.just("100"), st.just(True))),
    "max_completion_tokens": (st.integers(1, 300), st.one_of(numbers, st.just("100"))),
    "temperature": (st.floats(0, 2), st.one_of(numbers, st.just("0.5"), st.just(-1), st.just(3))),
    "top_p": (probability, numbers),
    "n": (st.just(1), st.one_of(numbers, st.just(2))),
    "stop": (st.one_of(short_text, st.lists(short_text, max_size=4), st.none()), json_values),
    "stream": (st.booleans(), st.sampled_from(WIRE_VALUES["stream"])),
    "stream_options": (st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
                       st.sampled_from(WIRE_VALUES["stream_options"])),
    "tools": (st.lists(tool, max_size=2), st.one_of(json_values, st.lists(json_values, max_size=2))),
    "tool_choice": (st.sampled_from(["auto", "none"]), json_values),
    "response_format": (response_format, json_values),
    "seed": (st.integers(0, 2**31), numbers),
    "user": (short_text, json_values),
    "presence_penalty": (st.floats(-2, 2), numbers),
    "frequency_penalty": (st.floats(-2, 2), numbers),
    "logprobs": (st.booleans(), json_values),
    "logit_bias": (st.dictionaries(st.integers(0, 100_000).map(str), st.integers(-100, 100), max_size=3), json_values),
    "parallel_tool_calls": (st.booleans(), json_values),
    "metadata": (st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), short_text, max_size=3), json_values),
}
OPTIONAL = frozenset(FIELDS) - {"model", "messages"}
chat_bodies = bodies(FIELDS, optional=OPTIONAL)


@pytest.fixture
def fuzz_caller(tenant_admin) -> Persona:
    """The tenant admin with every quota, rate and concurrency limit out of the way, so the examples reach
    validation and the provider instead of a 429 after the first few dozen calls."""
    for key in POLICY_KEYS.values():
        # An API key's own budget is set on the key, not in a rule (and these calls use no key).
        if key.kind in {KeyKind.QUOTA, KeyKind.RATE, KeyKind.CONCURRENCY} and key.subject != Subject.KEY:
            value = "1000000" if key.unit == "USD" else 10**12
            policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key=key.name, value=value)
    assert Task.objects.filter(code=TASK).exists()
    return tenant_admin


def test_no_chat_request_reaches_a_5xx_or_leaves_a_hold(fuzz_caller):
    client = fuzz_caller.client

    @hypothesis.settings(FUZZ, max_examples=EXAMPLES)
    @given(body=chat_bodies, content_type=content_types)
    def check(body: bytes, content_type: str):
        try:
            response = client.generic("POST", URL, data=body, content_type=content_type)
            assert_well_formed(response)
            assert_no_holds()
        finally:
            release_leftover_holds()

    check()


# --- the OpenAI request surface (issue 13 §2): tool conversations, structured output, n, unknown fields ---

schema_leaf = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "boolean"},
                               {"type": "array", "items": {"type": "number"}}, {"enum": ["a", "b"]}, {}])
schema = st.recursive(schema_leaf, lambda inner: st.fixed_dictionaries(
    {"type": st.just("object"), "properties": st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), inner,
                                                               max_size=3)}), max_leaves=6)
call_ids = st.from_regex(r"call_[a-z0-9]{1,8}", fullmatch=True)


@st.composite
def tool_conversation(draw) -> list[dict]:
    """A user turn, an assistant turn calling tools (ids drawn, maybe unanswered or answered twice),
    tool results (some for ids nobody called), and maybe a last user turn."""
    ids = draw(st.lists(call_ids, min_size=1, max_size=3, unique=True))
    names = st.from_regex(r"[a-z_]{1,10}", fullmatch=True)
    arguments = st.sampled_from(["{}", '{"x": 1}', "", "{"])
    calls = [{"id": i, "type": "function", "function": {"name": draw(names), "arguments": draw(arguments)}}
             for i in ids]
    answered = draw(st.lists(st.one_of(st.sampled_from(ids), call_ids), max_size=3))
    messages = [{"role": "user", "content": draw(short_text)},
                {"role": "assistant", "content": draw(st.one_of(st.none(), short_text)), "tool_calls": calls}]
    messages += [{"role": "tool", "tool_call_id": i, "content": draw(st.one_of(short_text, st.lists(text_part,
                                                                                                    max_size=2)))}
                 for i in answered]
    if draw(st.booleans()):
        messages.append({"role": "user", "content": draw(st.lists(st.one_of(text_part, image_part), min_size=1,
                                                                  max_size=2))})
    return messages


surface_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS), "messages": tool_conversation()},
    optional={
        "tools": st.lists(tool, max_size=2),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]),
                                 st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
                                     {"name": st.from_regex(r"[a-zA-Z_]{1,20}", fullmatch=True)})})),
        "parallel_tool_calls": st.booleans(),
        "response_format": st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True), "schema": schema},
            optional={"strict": st.booleans()})}),
        "n": st.integers(0, 10), "stream": st.booleans(), "max_tokens": st.integers(1, 200),
        "logprobs": st.booleans(), "top_logprobs": st.integers(-1, 25), "user": short_text,
        "stop": st.one_of(short_text, st.lists(short_text, max_size=5)),
        "seed": st.integers(-2**64, 2**64),
        "x_unknown": json_values,  # not an OpenAI field: always a 400
    },
)


def test_no_tool_conversation_or_structured_request_reaches_a_5xx_or_leaves_a_hold(fuzz_caller):
    client = fuzz_caller.client

    @hypothesis.settings(FUZZ, max_examples=100)
    @given(body=surface_bodies)
    def check(body: dict):
        try:
            # ensure_ascii: a lone surrogate travels as its JSON escape, as a client would send it
            response = client.generic("POST", URL, data=json.dumps(body), content_type="application/json")
            assert_well_formed(response)
            if "x_unknown" in body:  # refused (for its name, or for text no store can hold), never run
                assert response.status_code == 400, response.status_code
            assert_no_holds()
        finally:
            release_leftover_holds()

    check()
