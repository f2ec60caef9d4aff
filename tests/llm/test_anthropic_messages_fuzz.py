"""Property-based tests of the Messages API's input: whatever a client POSTs to /v1/{TASK}/v1/messages,
never a 5xx, every refusal in Anthropic's error shape, and no hold left behind.

The examples are shaped like Anthropic's Messages request (model, max_tokens, system, messages with
text / image / tool_use / tool_result blocks, stop_sequences, sampling parameters, tools, tool_choice,
metadata, stream), each with one or two fields wrong, missing or nested thousands deep, mixed with any
JSON and bytes that are no JSON. The embedded offline provider answers the valid ones, so each of
those is a whole admitted, settled call.
"""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import (
    FUZZ,
    any_text,
    assert_no_holds,
    bodies,
    content_types,
    json_values,
    numbers,
    release_leftover_holds,
)
from tests.test_fuzz_v1 import fuzz_caller  # noqa: F401, F811 (the fixture: every limit out of the way)

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
URLS = [f"/v1/{TASK}/v1/messages", f"/v1/{TASK}/messages"]
EXAMPLES = 120
ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
               "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error"}

short_text = st.text(st.characters(codec="utf-8"), max_size=40)
text_block = st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(short_text, any_text)},
                                   optional={"cache_control": st.just({"type": "ephemeral"})})
image_block = st.fixed_dictionaries({"type": st.just("image"), "source": st.one_of(
    st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.sampled_from(["image/png", "image/bmp"]),
                           "data": st.sampled_from(["iVBORw0KGgo=", ""])}),
    st.fixed_dictionaries({"type": st.just("url"), "url": st.sampled_from(["https://example.com/a.png", "ftp://x"])}),
    json_values)})
tool_use = st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.sampled_from(["toolu_1", "", "x"]),
                                  "name": st.sampled_from(["get_weather", "nope"]),
                                  "input": st.one_of(st.just({"city": "Paris"}), json_values)})
tool_result = st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.sampled_from(["toolu_1", "zz"])},
                                    optional={"content": st.one_of(short_text, st.lists(text_block, max_size=2),
                                                                   json_values),
                                              "is_error": st.one_of(st.booleans(), json_values)})
odd_block = st.fixed_dictionaries({"type": st.sampled_from(["document", "thinking", "video", "search_result"])})
blocks = st.lists(st.one_of(text_block, image_block, tool_use, tool_result, odd_block), min_size=1, max_size=3)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]),
                                 "content": st.one_of(short_text, any_text, blocks)})
user_message = st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(short_text, blocks)})
tool = st.fixed_dictionaries({"name": st.from_regex(r"[a-zA-Z_]{1,20}", fullmatch=True),
                              "input_schema": st.one_of(st.just({"type": "object", "properties": {}}), json_values)},
                             optional={"description": short_text, "type": st.sampled_from(["custom", "bash_2025"])})
tool_choice = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "none"])},
                                              optional={"disable_parallel_tool_use": st.booleans()}),
                        st.fixed_dictionaries({"type": st.just("tool"), "name": st.sampled_from(["get_weather", "x"])}))

FIELDS: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]] = {
    "model": (st.sampled_from(["auto", "PRO_M", "offline-pro-m", "no-such-model"]), st.one_of(any_text, json_values)),
    "max_tokens": (st.integers(1, 200), st.one_of(numbers, st.just("100"), st.just(True))),
    "messages": (st.lists(message, min_size=0, max_size=3).map(lambda m: m + [{"role": "user", "content": "Hi"}])
                 | st.lists(user_message, min_size=1, max_size=2),
                 st.one_of(st.sampled_from([[], {}, "hi", [None], [{}], [{"role": "user"}]]),
                           st.lists(json_values, max_size=3))),
    "system": (st.one_of(short_text, st.lists(text_block, max_size=2)), json_values),
    "stop_sequences": (st.lists(short_text, max_size=3), json_values),
    "temperature": (st.floats(0, 1), st.one_of(numbers, st.just(2))),
    "top_p": (st.floats(0, 1), numbers),
    "top_k": (st.integers(1, 50), numbers),
    "tools": (st.lists(tool, max_size=2), st.one_of(json_values, st.lists(json_values, max_size=2))),
    "tool_choice": (tool_choice, json_values),
    "metadata": (st.fixed_dictionaries({}, optional={"user_id": short_text}), json_values),
    "stream": (st.booleans(), st.sampled_from(["yes", 1, 0, None, [], {}])),
    "output_config": (st.just({"format": {"type": "json_schema", "schema": {"type": "object"}}}), json_values),
}
OPTIONAL = frozenset(FIELDS) - {"model", "max_tokens", "messages"}
message_bodies = bodies(FIELDS, optional=OPTIONAL)


def assert_anthropic_shaped(response) -> None:
    try:
        content = b"".join(response) if response.streaming else response.content
    except Exception as error:  # the stream broke off after its 200
        raise AssertionError(f"the event stream crashed: {error!r}") from error
    assert response.status_code < 500, (response.status_code, content[:1000])
    if response.get("Content-Type", "").startswith("text/event-stream"):
        assert response.status_code == 200, content[:1000]
        chunks = content.decode().strip().split("\n\n")
        assert chunks[0].startswith("event: message_start") or chunks[0].startswith("event: error"), chunks[0]
        assert chunks[-1].startswith("event: message_stop") or chunks[-1].startswith("event: error"), chunks[-1]
        return
    body = json.loads(content)
    if response.status_code >= 400:
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert body["error"]["type"] in ERROR_TYPES and isinstance(body["error"]["message"], str), body
        assert body["error"]["message"]
    else:
        assert body["type"] == "message" and isinstance(body["content"], list), body


def test_no_messages_request_reaches_a_5xx_or_leaves_a_hold(fuzz_caller):  # noqa: F811
    client = fuzz_caller.client

    @hypothesis.settings(FUZZ, max_examples=EXAMPLES)
    @given(body=message_bodies, content_type=content_types, url=st.sampled_from(URLS))
    def check(body: bytes, content_type: str, url: str):
        try:
            response = client.generic("POST", url, data=body, content_type=content_type)
            assert_anthropic_shaped(response)
            assert_no_holds()
        finally:
            release_leftover_holds()

    check()
