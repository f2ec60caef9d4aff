"""The OpenAI chat-completions wire format: reading a request body, and writing completion and chunk
bodies. Nothing here touches the database or a provider.

A request is validated whole, before anything is admitted: a body that passes here can still be
refused by policy, but never fails later for the shape of its input (a malformed field that only
failed after admission used to keep the request's holds until its lease ran out).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from catalog.selectors import ModelInfo
from gateway_project.errors import BadRequest
from gateway_project.parsers import bad_text
from llm.providers.base import (
    NO_OPTIONS,
    ChatResult,
    GenerationOptions,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

ROLES = {"system", "user", "assistant", "developer", "tool"}
# Deeper than any real chat request (content parts, tool schemas): the walk below and everything
# downstream (fingerprints, tokenizers, provider SDKs) stay far from Python's recursion limit.
MAX_DEPTH = 64
DONE = b"data: [DONE]\n\n"


@dataclass
class ChatInput:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float | None
    stream: bool
    include_usage: bool = False
    # Task adapters run several steps under one reservation and declare their model classes.
    steps: int | str = 1
    api_calls: int | str | None = None
    restrict_classes: tuple[str, ...] | None = None
    # The dearest price of one outbound request (prior-art search fees): the cost hold covers
    # api_calls of them on top of the tokens' worst case.
    api_call_fee_micro_usd: int = 0
    options: GenerationOptions = NO_OPTIONS


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_body(raw: bytes) -> Any:
    """Parse a request body. Everything a client can send is a 400 here, never a 500: invalid JSON,
    invalid UTF-8, NaN/Infinity (Python's json accepts them; JSON does not), nesting so deep that
    the parser itself runs out of stack."""
    try:
        return json.loads(raw or b"null", parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None


def check_json_values(value: Any, *, where: str = "body") -> None:
    """Every string valid Unicode (a lone surrogate cannot be encoded for a provider, a tokenizer or
    the database), no nesting deeper than MAX_DEPTH. Iterative: the body's depth is the client's."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"The request {where} is nested more than {MAX_DEPTH} levels deep.",
                             code="invalid_body")
        if isinstance(item, str):
            if bad_text(item):  # the REST API's parser applies the same rule
                raise BadRequest("The request contains text that is not valid Unicode (a lone surrogate) or a "
                                 "NUL character.", code="invalid_text")
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadRequest("Numbers must be finite.", code="invalid_body")


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false.", code=f"invalid_{name}")
    return value


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer.", code="invalid_max_tokens")
    return value


# The top-level fields of OpenAI's chat-completions request this gateway reads. Anything else is a
# 400 naming it: a field the gateway does not know would otherwise be dropped without a word.
KNOWN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "stop", "top_p", "seed", "n",
    "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "user", "metadata",
})
# OpenAI fields no provider behind the gateway is given (no mapping is implemented): refused by name.
UNSUPPORTED_FIELDS = frozenset({
    "logit_bias", "functions", "function_call", "store", "service_tier", "reasoning_effort", "modalities",
    "audio", "prediction", "web_search_options", "prompt_cache_key", "safety_identifier", "verbosity",
})
MAX_N = 8  # completions per request: each is held at its worst case
MAX_TOOLS = 128
MAX_STOP = 4
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IMAGE_DETAILS = {"auto", "low", "high"}
DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")


def _bad(message: str, code: str = "invalid_request") -> BadRequest:
    return BadRequest(message, code=code)


def _check_image(part: dict[str, Any]) -> None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not (url.startswith(("https://", "http://")) or DATA_IMAGE.match(url)):
        raise _bad("An image_url part needs 'image_url.url': an http(s) URL or a data:image/...;base64 URL.",
                   "invalid_messages")
    if image.get("detail") is not None and image["detail"] not in IMAGE_DETAILS:
        raise _bad("'image_url.detail' must be auto, low or high.", "invalid_messages")


def _check_parts(content: list[Any], role: str) -> None:
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest("Each content part must be an object with a 'type'.", code="invalid_messages")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequest("A text content part needs a 'text' string.", code="invalid_messages")
        elif kind == "image_url" and role == "user":
            _check_image(part)
        elif kind in ("image_url", "input_audio", "file", "refusal"):
            raise BadRequest(f"Content parts of type '{kind}' are not supported in {role} messages by this "
                             "gateway.", code="unsupported_parameter")
        else:
            raise BadRequest(f"Unknown content part type '{kind}'.", code="invalid_messages")


def _check_tool_calls(calls: Any) -> list[str]:
    if not isinstance(calls, list) or not calls:
        raise _bad("An assistant message's 'tool_calls' must be a non-empty list.", "invalid_messages")
    ids = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call.get("id"), str) or not call["id"] or call.get("type", "function") != "function"
                or not isinstance(function, dict) or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str)):
            raise _bad("Each tool call needs an 'id', type 'function' and 'function' with 'name' and 'arguments' "
                       "strings.", "invalid_messages")
        ids.append(call["id"])
    return ids


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", code="invalid_messages")
    called: set[str] = set()
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise BadRequest("Each message needs a 'role' of system, user, assistant, developer or tool.",
                             code="invalid_messages")
        role = message["role"]
        if message.get("tool_calls") is not None:
            if role != "assistant":
                raise _bad("Only assistant messages carry 'tool_calls'.", "invalid_messages")
            called.update(_check_tool_calls(message["tool_calls"]))
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in called:
                raise _bad("A tool message needs the 'tool_call_id' of a tool call an earlier assistant message "
                           "made.", "invalid_messages")
        content = message.get("content", "")
        if content is None and role == "assistant":
            continue  # an assistant turn that only called tools
        if isinstance(content, list):
            _check_parts(content, role)
        elif not isinstance(content, str):
            raise BadRequest("A message's 'content' must be a string or a list of parts.", code="invalid_messages")
    return messages


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _bad(f"'{name}' must be a number from {low:g} to {high:g}.", f"invalid_{name}")
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"'{name}' must be an integer from {low} to {high}.", f"invalid_{name}")
    return value


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise _bad(f"'tools' must be a list of at most {MAX_TOOLS} tools.", "invalid_tools")
    tools: list[Tool] = []
    for item in value:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(function, dict):
            raise _bad("Each tool must be {\"type\": \"function\", \"function\": {...}}.", "invalid_tools")
        name, parameters = function.get("name"), function.get("parameters")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise _bad("A tool's 'function.name' must be 1-64 letters, digits, '_' or '-'.", "invalid_tools")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad(f"Tool '{name}': 'parameters' must be a JSON schema object.", "invalid_tools")
        description, strict = function.get("description", ""), function.get("strict")
        if not isinstance(description, str) or (strict is not None and not isinstance(strict, bool)):
            raise _bad(f"Tool '{name}': 'description' must be a string and 'strict' true or false.", "invalid_tools")
        if any(t.name == name for t in tools):
            raise _bad(f"Two tools are named '{name}'.", "invalid_tools")
        tools.append(Tool(name=name, description=description,
                          parameters=parameters if parameters is not None else {"type": "object", "properties": {}},
                          strict=strict))
    return tuple(tools)


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice | None:
    if value is None:
        return None
    if not tools:
        raise _bad("'tool_choice' is only allowed when 'tools' are given.", "invalid_tool_choice")
    if value in ("none", "auto", "required"):
        return ToolChoice(mode=value)
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(function, dict):
        raise _bad("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": "
                   "{\"name\": ...}}.", "invalid_tool_choice")
    name = function.get("name")
    if not any(t.name == name for t in tools):
        raise _bad("'tool_choice' names a function that is not in 'tools'.", "invalid_tool_choice")
    return ToolChoice(mode="function", name=name)


def _response_format(value: Any) -> ResponseFormat | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)
    if kind != "json_schema":
        raise _bad("'response_format.type' must be text, json_object or json_schema.", "invalid_response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not TOOL_NAME.match(spec["name"]):
        raise _bad("'response_format.json_schema' needs a 'name' of 1-64 letters, digits, '_' or '-'.",
                   "invalid_response_format")
    schema, strict = spec.get("schema"), spec.get("strict")
    if (schema is not None and not isinstance(schema, dict)) or (strict is not None and not isinstance(strict, bool)):
        raise _bad("'response_format.json_schema.schema' must be an object and 'strict' true or false.",
                   "invalid_response_format")
    return ResponseFormat(type="json_schema", name=spec["name"], schema=schema or {"type": "object"}, strict=strict)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)):
        raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them.", "invalid_stop")
    return tuple(stops)


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > 16
            or not all(isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in value.items())):
        raise _bad("'metadata' must be an object of at most 16 string values (keys up to 64, values up to 512 "
                   "characters).", "invalid_metadata")
    return value


def _options(body: dict[str, Any]) -> GenerationOptions:
    tools = _tools(body.get("tools"))
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _bad("'parallel_tool_calls' must be true or false.", "invalid_parallel_tool_calls")
        if not tools:
            raise _bad("'parallel_tool_calls' is only allowed when 'tools' are given.", "invalid_parallel_tool_calls")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _bad("'logprobs' must be true or false.", "invalid_logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, 20)
    if top_logprobs is not None and not logprobs:
        raise _bad("'top_logprobs' needs 'logprobs': true.", "invalid_top_logprobs")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise _bad("'user' must be a string of at most 256 characters.", "invalid_user")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) >= 2**63):
        raise _bad("'seed' must be an integer.", "invalid_seed")
    n = _integer(body, "n", 1, MAX_N)
    return GenerationOptions(
        tools=tools, tool_choice=_tool_choice(body.get("tool_choice"), tools), parallel_tool_calls=parallel,
        response_format=_response_format(body.get("response_format")), stop=_stop(body.get("stop")),
        top_p=_number(body, "top_p", 0, 1), seed=seed, n=n or 1,
        presence_penalty=_number(body, "presence_penalty", -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", -2, 2),
        logprobs=logprobs or None, top_logprobs=top_logprobs, user=user, metadata=_metadata(body.get("metadata")),
    )


def _check_fields(body: dict[str, Any]) -> None:
    unknown = sorted(k for k in body if k not in KNOWN_FIELDS)
    if not unknown:
        return
    refused = [k for k in unknown if k in UNSUPPORTED_FIELDS]
    if refused:
        raise BadRequest(f"Unsupported parameter '{refused[0]}': this gateway does not pass it to any provider.",
                         code="unsupported_parameter")
    raise BadRequest(f"Unknown parameter '{unknown[0][:64]}'.", code="unknown_parameter")


def parse_chat_request(body: Any) -> ChatInput:
    """The whole chat-completions request, checked; raises BadRequest (400) on anything malformed."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    check_json_values(body)
    _check_fields(body)
    messages = _check_messages(body.get("messages"))
    model = body.get("model", "auto")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string.", code="invalid_model")
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        max_tokens = _positive_int(body["max_completion_tokens"], "max_completion_tokens")
    else:
        max_tokens = _positive_int(body.get("max_tokens"), "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise BadRequest("'temperature' must be a number from 0 to 2.", code="invalid_temperature")
    stream = _optional_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.", code="invalid_stream_options")
    include_usage = False
    if options:
        if not stream:
            raise BadRequest("'stream_options' is only allowed with stream: true.", code="invalid_stream_options")
        unknown = sorted(k for k in options if k != "include_usage")
        if unknown:
            raise BadRequest(f"Unknown parameter 'stream_options.{unknown[0][:64]}'.", code="unknown_parameter")
        value = options.get("include_usage")
        if value is not None and not isinstance(value, bool):
            raise BadRequest("'stream_options.include_usage' must be true or false.",
                             code="invalid_stream_options")
        include_usage = bool(value)
    generation = _options(body)
    if stream and generation.logprobs:
        raise BadRequest("Unsupported parameter 'logprobs' with stream: true: the gateway returns logprobs only in "
                         "non-streamed answers.", code="unsupported_parameter")
    if stream and generation.n > 1:
        raise BadRequest("Unsupported parameter 'n' > 1 with stream: true: no provider behind this gateway streams "
                         "several completions.", code="unsupported_parameter")
    return ChatInput(model=model or "auto", messages=messages, max_tokens=max_tokens, temperature=temperature,
                     stream=stream, include_usage=include_usage, options=generation, steps=generation.n)


def fingerprint(task_code: str, body: Any) -> str:
    """What an Idempotency-Key is bound to: the task and the whole body."""
    return hashlib.sha256((task_code + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def tool_calls_body(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def completion_body(request_id: str, model: ModelInfo, result: ChatResult, created: int) -> dict[str, Any]:
    choices = []
    for index, choice in enumerate(result.choices()):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text or None if choice.tool_calls
                                   else choice.text, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = tool_calls_body(choice.tool_calls)
        choices.append({"index": index, "message": message, "finish_reason": choice.finish_reason,
                        "logprobs": choice.logprobs})
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model.model_name,
        "choices": choices,
        "usage": usage_body(result.usage.tokens_in, result.usage.tokens_out, result.usage.cached_in),
        "system_fingerprint": f"{model.provider}:{model.model_class}",
    }


def tool_call_deltas_body(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """OpenAI's streamed tool calls: the first piece of each call has its id, type and name (and empty
    or first arguments), the following ones only `index` and an arguments fragment."""
    out = []
    for d in deltas:
        item: dict[str, Any] = {"index": d.index}
        if d.id is not None:
            item.update(id=d.id, type="function", function={"name": d.name or "", "arguments": d.arguments})
        else:
            item["function"] = {"arguments": d.arguments}
        out.append(item)
    return out


def usage_body(tokens_in: int, tokens_out: int, cached_in: int = 0) -> dict[str, Any]:
    """OpenAI's usage block; prompt-cache hits in `prompt_tokens_details.cached_tokens`, as OpenAI
    reports them (whichever provider served the call)."""
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out,
            "prompt_tokens_details": {"cached_tokens": cached_in}}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk(*, chunk_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})


def usage_chunk(*, chunk_id: str, created: int, model: str, tokens_in: int, tokens_out: int,
                cached_in: int = 0) -> bytes:
    return sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage_body(tokens_in, tokens_out, cached_in)})
