"""Anthropic's Messages wire format: reading a Messages request into the gateway's internal request,
and writing message objects, stream events and errors in Anthropic's shapes. Nothing here touches
the database or a provider.

A Messages request is translated into the gateway's one internal request (the OpenAI-shaped
messages and `GenerationOptions` of llm/providers/base.py) and then checked by the same parser as
chat completions (`openai_wire.parse_chat_request`), so both front ends accept and refuse the same
things, and any configured provider serves either. The mapping:

    system (string or text blocks)          -> a system message
    text / image (base64 or url) blocks     -> text / image_url parts
    assistant tool_use blocks               -> the assistant message's tool_calls (input as JSON text)
    user tool_result blocks                 -> tool messages (is_error: the text says so), first
    stop_sequences, temperature, top_p      -> stop, temperature, top_p
    tools (name, description, input_schema) -> function tools
    tool_choice auto/any/tool/none          -> auto/required/function/none;
        disable_parallel_tool_use           -> parallel_tool_calls: false
    metadata.user_id                        -> user
    output_config.format (json_schema)      -> response_format json_schema

Refused with a 400 naming them (never dropped without a word): `top_k` (no OpenAI-shaped
equivalent to map it to), extended `thinking`, server tools (`web_search_...` and other typed
tools), `document`/`thinking`/`search_result` and other content blocks, `container`,
`mcp_servers`, `service_tier`, `context_management`, and any unknown field. Prompt-cache hints
(`cache_control` on blocks, tools and the system prompt) are accepted and not forwarded: the
gateway does not ask providers to cache; the usage it returns still reports whatever the provider
read from or wrote to its cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway_project.errors import BadRequest, GatewayError
from llm import openai_wire
from llm.providers.base import ChatResult, Usage

KNOWN_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "tools",
    "tool_choice", "metadata", "stream", "output_config",
})
# Anthropic request fields the gateway has no mapping for: refused by name.
UNSUPPORTED_FIELDS = frozenset({
    "top_k", "thinking", "container", "mcp_servers", "service_tier", "context_management", "inference_geo",
})
ROLES = ("user", "assistant")
MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# finish reasons of the internal result -> Anthropic stop reasons
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               409: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               502: "api_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


def _bad(message: str, code: str = "invalid_request") -> BadRequest:
    return BadRequest(message, code=code)


def _unsupported(what: str) -> BadRequest:
    return BadRequest(f"Unsupported parameter '{what}': the gateway's Messages API does not pass it to any "
                      "provider.", code="unsupported_parameter")


@dataclass
class MessagesInput:
    chat: openai_wire.ChatInput
    translated: dict[str, Any]  # the chat-completions body it became (an Idempotency-Key binds the original)
    stop_sequences: tuple[str, ...] = ()


def _text_of(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}: a text block needs a 'text' string.", "invalid_messages")
    return text


def _system(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad("'system' must be a string or a list of text blocks.", "invalid_system")
    texts = []
    for block in value:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad("'system' blocks must be text blocks.", "invalid_system")
        texts.append(_text_of(block, "system"))
    return "\n\n".join(texts)


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if media not in MEDIA_TYPES or not isinstance(data, str) or not data:
            raise _bad("An image's base64 source needs 'media_type' (image/jpeg, png, gif or webp) and 'data'.",
                       "invalid_messages")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise _bad("An image's url source needs an http(s) 'url'.", "invalid_messages")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "file":
        raise _unsupported("image source type 'file'")
    raise _bad("An image block needs a 'source' of type base64 or url.", "invalid_messages")


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else None
                raise _unsupported(f"tool_result content of type '{kind}'") if isinstance(kind, str) else _bad(
                    "A tool_result's content must be a string or a list of text blocks.", "invalid_messages")
            parts.append(_text_of(part, "tool_result"))
        text = "\n".join(parts)
    else:
        raise _bad("A tool_result's content must be a string or a list of text blocks.", "invalid_messages")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad("A tool_result's 'is_error' must be true or false.", "invalid_messages")
    return f"Error: {text}" if is_error else text


def _message(message: Any, index: int) -> list[dict[str, Any]]:
    """One Messages turn as internal (OpenAI-shaped) messages."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise _bad(f"messages[{index}]: each message needs a 'role' of user or assistant.", "invalid_messages")
    unknown = sorted(k for k in message if k not in ("role", "content"))
    if unknown:
        raise _bad(f"messages[{index}]: unknown field '{unknown[0][:64]}'.", "unknown_parameter")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"messages[{index}]: 'content' must be a string or a list of content blocks.", "invalid_messages")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            raise _bad(f"messages[{index}]: each content block must be an object with a 'type'.", "invalid_messages")
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, f"messages[{index}]")})
        elif kind == "image" and role == "user":
            parts.append(_image(block))
        elif kind == "tool_use" and role == "assistant":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not isinstance(
                    arguments, dict):
                raise _bad(f"messages[{index}]: a tool_use block needs an 'id', a 'name' and an 'input' object.",
                           "invalid_messages")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"))}})
        elif kind == "tool_result" and role == "user":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"messages[{index}]: a tool_result block needs the 'tool_use_id' it answers.",
                           "invalid_messages")
            results.append({"role": "tool", "tool_call_id": call_id, "content": _tool_result_text(block)})
        elif kind in ("image", "tool_use", "tool_result"):
            raise _bad(f"messages[{index}]: '{kind}' blocks are not allowed in {role} messages.", "invalid_messages")
        else:
            raise _unsupported(f"content block type '{kind[:64]}'")
    out: list[dict[str, Any]] = list(results)  # tool answers come right after the turn that called the tools
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        if calls:
            out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        else:
            out.append({"role": "assistant", "content": text})
    elif parts or not results:
        out.append({"role": "user", "content": parts})
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _bad("'tools' must be a list.", "invalid_tools")
    tools = []
    for tool in value:
        if not isinstance(tool, dict):
            raise _bad("Each tool must be an object.", "invalid_tools")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _unsupported(f"tools[].type '{str(kind)[:64]}' (server tools)")
        unknown = sorted(k for k in tool if k not in ("type", "name", "description", "input_schema", "cache_control",
                                                       "strict"))
        if unknown:
            raise _bad(f"Unknown tool field '{unknown[0][:64]}'.", "unknown_parameter")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad("Each tool needs an 'input_schema' object.", "invalid_tools")
        function: dict[str, Any] = {"name": tool.get("name"), "parameters": schema}
        if "description" in tool:
            function["description"] = tool["description"]
        if "strict" in tool:
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> tuple[Any, bool | None]:
    """(the chat-completions tool_choice, parallel_tool_calls)."""
    if value is None:
        return None, None
    kind = value.get("type") if isinstance(value, dict) else None
    disable = value.get("disable_parallel_tool_use") if isinstance(value, dict) else None
    if disable is not None and not isinstance(disable, bool):
        raise _bad("'tool_choice.disable_parallel_tool_use' must be true or false.", "invalid_tool_choice")
    parallel = False if disable else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool":
        if not isinstance(value.get("name"), str):
            raise _bad("'tool_choice' of type tool needs a 'name'.", "invalid_tool_choice")
        return {"type": "function", "function": {"name": value["name"]}}, parallel
    raise _bad("'tool_choice.type' must be auto, any, tool or none.", "invalid_tool_choice")


def _output_config(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("'output_config' must be an object.", "invalid_output_config")
    unknown = sorted(k for k in value if k != "format")
    if unknown:
        raise _unsupported(f"output_config.{unknown[0][:64]}")
    fmt = value.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _bad("'output_config.format' must be {\"type\": \"json_schema\", \"schema\": {...}}.",
                   "invalid_output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _bad(f"'{name}' must be a number from 0 to 1.", f"invalid_{name}")
    return value


def parse_messages_request(body: Any) -> MessagesInput:
    """The whole Messages request, checked and translated; raises BadRequest (400) on anything malformed."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", "invalid_body")
    openai_wire.check_json_values(body)
    unknown = sorted(k for k in body if k not in KNOWN_FIELDS or k in UNSUPPORTED_FIELDS)
    if unknown:
        if unknown[0] in UNSUPPORTED_FIELDS or any(k in UNSUPPORTED_FIELDS for k in unknown):
            raise _unsupported(next(k for k in unknown if k in UNSUPPORTED_FIELDS))
        raise _bad(f"Unknown parameter '{unknown[0][:64]}'.", "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: a model class, a model name or \"auto\".", "invalid_model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("'max_tokens' is required and must be a positive integer.", "invalid_max_tokens")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _bad("'messages' must be a non-empty list.", "invalid_messages")
    messages: list[dict[str, Any]] = []
    system = _system(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        messages.extend(_message(turn, index))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be true or false.", "invalid_stream")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)):
        raise _bad("'stop_sequences' must be a list of non-empty strings.", "invalid_stop_sequences")
    translated: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    temperature, top_p = _number(body, "temperature"), _number(body, "top_p")
    if temperature is not None:
        translated["temperature"] = temperature
    if top_p is not None:
        translated["top_p"] = top_p
    if stops:
        translated["stop"] = stops
    tools = _tools(body.get("tools"))
    if tools:
        translated["tools"] = tools
    choice, parallel = _tool_choice(body.get("tool_choice"))
    if choice is not None and tools:
        translated["tool_choice"] = choice
    elif choice not in (None, "none", "auto"):
        raise _bad("'tool_choice' needs 'tools'.", "invalid_tool_choice")
    if parallel is not None and tools:
        translated["parallel_tool_calls"] = parallel
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or any(k != "user_id" for k in metadata):
            raise _bad("'metadata' may only carry 'user_id'.", "invalid_metadata")
        user = metadata.get("user_id")
        if user is not None:
            if not isinstance(user, str) or len(user) > 256:
                raise _bad("'metadata.user_id' must be a string of at most 256 characters.", "invalid_metadata")
            translated["user"] = user
    output = _output_config(body.get("output_config"))
    if output is not None:
        translated["response_format"] = output
    if stream:
        translated.update(stream=True, stream_options={"include_usage": True})
    chat = openai_wire.parse_chat_request(translated)
    return MessagesInput(chat=chat, translated=translated, stop_sequences=tuple(stops or ()))


# --- answers -------------------------------------------------------------------------------------


def usage_body(usage: Usage | None, *, tokens_in: int = 0, tokens_out: int = 0, cached_in: int = 0,
               cache_write: int = 0) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` are the prompt tokens neither read from nor written to the
    cache (the gateway's tokens_in counts all three)."""
    if usage is not None:
        tokens_in, tokens_out, cached_in, cache_write = (usage.tokens_in, usage.tokens_out, usage.cached_in,
                                                         usage.cache_write)
    cached_in = max(0, min(cached_in, tokens_in))
    cache_write = max(0, min(cache_write, tokens_in - cached_in))
    return {"input_tokens": tokens_in - cached_in - cache_write, "output_tokens": tokens_out,
            "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cached_in}


def _tool_input(arguments: str) -> Any:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw_arguments": arguments}  # a provider's broken JSON: kept, never dropped
    return value if isinstance(value, dict) else {"value": value}


def stop_reason(finish: str, text: str, stop_sequences: tuple[str, ...]) -> tuple[str, str | None]:
    reason = STOP_REASONS.get(finish, "end_turn")
    return reason, None


def message_body(*, request_id: str, model: str, result: ChatResult, stop_sequences: tuple[str, ...]
                 ) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.text:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call.arguments)})
    reason, sequence = stop_reason(result.finish_reason, result.text, stop_sequences)
    return {"id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage_body(result.usage)}


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Our one error shape ({"error": {"code", "message", "type"}}) as Anthropic's; the message is ours."""
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return {"type": "error", "error": {"type": error_type(status), "message": message or "Request failed."}}


def gateway_error_body(error: GatewayError) -> dict[str, Any]:
    return error_body(error.status_code, error.payload())
