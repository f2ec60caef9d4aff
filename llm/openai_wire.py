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
from dataclasses import dataclass
from typing import Any

from catalog.selectors import ModelInfo
from gateway_project.errors import BadRequest
from gateway_project.parsers import bad_text
from llm.providers.base import ChatResult

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


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", code="invalid_messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise BadRequest("Each message needs a 'role' of system, user, assistant, developer or tool.",
                             code="invalid_messages")
        content = message.get("content", "")
        if content is None and message["role"] == "assistant":
            continue  # an assistant turn that only called tools
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise BadRequest("Each content part must be an object with a 'type'.", code="invalid_messages")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise BadRequest("A text content part needs a 'text' string.", code="invalid_messages")
        elif not isinstance(content, str):
            raise BadRequest("A message's 'content' must be a string or a list of parts.", code="invalid_messages")
    return messages


def parse_chat_request(body: Any) -> ChatInput:
    """The whole chat-completions request, checked; raises BadRequest (400) on anything malformed."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    check_json_values(body)
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
        value = options.get("include_usage")
        if value is not None and not isinstance(value, bool):
            raise BadRequest("'stream_options.include_usage' must be true or false.",
                             code="invalid_stream_options")
        include_usage = bool(value)
    return ChatInput(model=model or "auto", messages=messages, max_tokens=max_tokens, temperature=temperature,
                     stream=stream, include_usage=include_usage)


def fingerprint(task_code: str, body: Any) -> str:
    """What an Idempotency-Key is bound to: the task and the whole body."""
    return hashlib.sha256((task_code + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def completion_body(request_id: str, model: ModelInfo, result: ChatResult, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage_body(result.usage.tokens_in, result.usage.tokens_out),
        "system_fingerprint": f"{model.provider}:{model.model_class}",
    }


def usage_body(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk(*, chunk_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})


def usage_chunk(*, chunk_id: str, created: int, model: str, tokens_in: int, tokens_out: int) -> bytes:
    return sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage_body(tokens_in, tokens_out)})
