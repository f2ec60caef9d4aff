"""Fake of Anthropic's Messages API.

`POST /v1/messages`; the key as `x-api-key` or `Authorization: Bearer` (SDK 2.x sends the latter);
an `anthropic-version` header is required. Request: `model`, `max_tokens` (required), `messages`
(roles "user" / "assistant"), optional top-level `system` (string or text blocks). With
`anthropic-version: 2026-10-21` (the SDK 2.x default) the sampling parameters `temperature`,
`top_p` and `top_k` are rejected with a 400, as the real API does.

Non-streaming: a `message` object with `content` text blocks, `stop_reason` and `usage`
(`input_tokens`, `output_tokens`). Streaming: `message_start` (usage with the input tokens and
`output_tokens: 1`), `content_block_start`, `ping`, one `content_block_delta` per word,
`content_block_stop`, `message_delta` (stop reason and the cumulative `output_tokens`), `message_stop`.
Error bodies: `{"type": "error", "error": {"type": ..., "message": ...}}`; 529 is `overloaded_error`.

Input tokens: whitespace words of the system prompt and of every message + 3 per message.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.base import Event, FakeProvider, Fault, answer, pieces, response_id, words_of
from tests.fakes.tooling import call_id, fragments, json_answer, pick_tool

API_VERSION = "2026-10-21"
_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
           404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
           503: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return " ".join(str(b.get("text", "")) for b in content)
    return None


def _blocks_text(message: dict[str, Any], tool_ids: set[str]) -> str | None:
    """The text of a message's content (string or blocks: text, image, tool_use from the assistant,
    tool_result from the user answering an earlier tool_use); None or "error: ..." when invalid."""
    content, role = message.get("content"), message.get("role")
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image" and role == "user" and isinstance(block.get("source"), dict) \
                and block["source"].get("type") in ("base64", "url"):
            continue
        elif kind == "tool_use" and role == "assistant" and isinstance(block.get("input"), dict):
            tool_ids.add(block.get("id"))
            texts.append(json.dumps(block["input"]))
        elif kind == "tool_result" and role == "user":
            if block.get("tool_use_id") not in tool_ids:
                return "error: messages: tool_result blocks must answer a tool_use of the previous assistant turn"
            result = block.get("content", "")
            texts.append(result if isinstance(result, str) else str(_text(result) or ""))
        else:
            return None
    return " ".join(texts)


class FakeAnthropic(FakeProvider):
    """Tools (`tools` with `input_schema`, `tool_choice` auto / any / tool / none), structured output
    (`output_config.format` json_schema) and `stop_sequences` follow tests/fakes/tooling.py; a tool
    call is a `tool_use` content block and `stop_reason: "tool_use"`, streamed as a
    content_block_start of type tool_use and `input_json_delta` fragments of its input."""

    name = "anthropic"
    # Of the prompt's tokens, this many are reported as read from (cache_read_input_tokens) and written
    # to (cache_creation_input_tokens) the prompt cache, beside the rest (input_tokens), as the API does.
    cached_tokens = 0
    cache_write_tokens = 0

    def authorized(self, h) -> bool:
        if self.api_key is None:
            return True
        return self.api_key == h.headers.get("x-api-key") or h.headers.get("Authorization") == f"Bearer {self.api_key}"

    def send_unauthorized(self, h) -> None:
        self.send_error_status(h, 401, message="invalid x-api-key")  # Anthropic's own wording

    def error_body(self, status: int, code: str | None, message: str) -> dict[str, Any]:
        kind = code or _ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}

    @staticmethod
    def _sse(event: str, data: dict[str, Any]) -> bytes:
        return b"event: " + event.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"

    def error_event(self, status: int, code: str | None) -> bytes:
        return self._sse("error", self.error_body(status, code, "Overloaded" if status == 529 else "Internal error"))

    def malformed_event(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"ty\n\n'

    def missing_fields_body(self) -> dict[str, Any]:
        return {"id": "msg_missing", "type": "message"}

    def truncated_body(self) -> bytes:
        return b'{"id": "msg_truncated", "type": "message", "content": [{"type": "text", "text": "trun'

    @staticmethod
    def _structured(body: dict[str, Any], messages: list[Any], words: list[str]) -> dict[str, Any] | str | None:
        """The tool call or JSON this request gets, None for plain text, a string for a 400."""
        tools = body.get("tools") or []
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
                   for t in tools):
            return "tools: each tool needs a name and an input_schema"
        choice = body.get("tool_choice") or {"type": "auto"}
        mode = {"auto": "auto", "none": "none", "any": "required", "tool": "function"}.get(choice.get("type"))
        if mode is None:
            return "tool_choice: type must be auto, any, tool or none"
        last = messages[-1]
        content = last.get("content")
        is_result = isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)
        last_user = None if is_result or last.get("role") != "user" else _blocks_text(last, set())
        call = pick_tool([(t["name"], t["input_schema"]) for t in tools], mode, choice.get("name"), last_user)
        if call is not None:
            name, arguments = call
            return {"call": (name, arguments, call_id("toolu_", name, arguments))}
        fmt = (body.get("output_config") or {}).get("format")
        if fmt is not None:
            if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
                return "output_config.format: type json_schema with a schema is required"
            return {"json": json_answer(fmt["schema"], words)}
        return None

    def _send_structured(self, h, body: dict[str, Any], model: str, message: dict[str, Any],
                         structured: dict[str, Any], n_in: int, fault: Fault | None) -> None:
        if "call" in structured:
            name, arguments, tool_id = structured["call"]
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": name, "input": json.loads(arguments)}
            text, stop, delta_type, field = arguments, "tool_use", "input_json_delta", "partial_json"
            start_block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        else:
            text = structured["json"]
            block = {"type": "text", "text": text}
            stop, delta_type, field = "end_turn", "text_delta", "text"
            start_block = {"type": "text", "text": ""}
        n_out = words_of(text)
        if body.get("stream"):
            parts = fragments(text)
            events = [
                Event(self._sse("message_start", {"type": "message_start", "message": message}), 0),
                Event(self._sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": start_block}), 0),
            ]
            events += [Event(self._sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                               "delta": {"type": delta_type, field: part}}),
                             words_of("".join(parts[:i + 1])), content=True) for i, part in enumerate(parts)]
            events += [
                Event(self._sse("content_block_stop", {"type": "content_block_stop", "index": 0}), n_out),
                Event(self._sse("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": stop, "stop_sequence": None},
                                                  "usage": {"output_tokens": n_out}}), n_out),
                Event(self._sse("message_stop", {"type": "message_stop"}), n_out),
            ]
            return self.send_stream(h, model, n_in, events, fault)
        self.bill(model, n_in, n_out)
        message.update(content=[block], stop_reason=stop, usage={**message["usage"], "output_tokens": n_out})
        self.send_json(h, 200, message)

    def handle(self, h, body: dict[str, Any], fault: Fault | None) -> None:
        if urlsplit(h.path).path != "/v1/messages":
            return self.send_error_status(h, 404, message=f"Not found: {h.path}")
        version = h.headers.get("anthropic-version")
        if not version:
            return self.send_error_status(h, 400, message="anthropic-version: header is required")
        if version >= API_VERSION:
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    return self.send_error_status(h, 400, message=f"{name}: Extra inputs are not permitted")
        model, messages, max_tokens = body.get("model"), body.get("messages"), body.get("max_tokens")
        if not isinstance(model, str) or not isinstance(max_tokens, int) or max_tokens < 1:
            return self.send_error_status(h, 400, message="model and max_tokens >= 1 are required")
        if not isinstance(messages, list) or not messages:
            return self.send_error_status(h, 400, message="messages: at least one message is required")
        texts: list[str] = []
        tool_ids: set[str] = set()
        for message in messages:
            text = _blocks_text(message, tool_ids) if isinstance(message, dict) else None
            if isinstance(text, str) and text.startswith("error: "):
                return self.send_error_status(h, 400, message=text[7:])
            if text is None or message.get("role") not in ("user", "assistant"):
                return self.send_error_status(
                    h, 400, message="messages: roles must be 'user' or 'assistant' with text content")
            texts.append(text)
        system = body.get("system", "")
        system_text = _text(system)
        if system_text is None:
            return self.send_error_status(h, 400, message="system: must be a string or text blocks")
        prompt = "\n".join([system_text, *texts])
        words, truncated = answer(model, prompt, max_tokens)
        stop = "max_tokens" if truncated else "end_turn"
        if fault is not None and fault.kind == "filter":
            words, stop, fault = words[: len(words) // 2], "refusal", None
        structured = self._structured(body, messages, words)
        if isinstance(structured, str):
            return self.send_error_status(h, 400, message=structured)
        for sequence in body.get("stop_sequences") or ():
            text = " ".join(words)
            if structured is None and sequence in text:
                words, stop = text[:text.index(sequence)].split(), "stop_sequence"
        n_in = words_of(system_text) + sum(words_of(t) + 3 for t in texts)
        mid = response_id("msg_", model, prompt)
        cache_read = min(self.cached_tokens, n_in)
        cache_write = min(self.cache_write_tokens, n_in - cache_read)
        message = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": n_in - cache_read - cache_write, "output_tokens": 1,
                             "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read,
                             "service_tier": "standard"}}

        if structured is not None:
            return self._send_structured(h, body, model, message, structured, n_in, fault)
        if body.get("stream"):
            events = [
                Event(self._sse("message_start", {"type": "message_start", "message": message}), 0),
                Event(self._sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}}), 0),
                Event(self._sse("ping", {"type": "ping"}), 0),
            ]
            events += [
                Event(self._sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": piece}}),
                      i + 1, content=True)
                for i, piece in enumerate(pieces(words))
            ]
            n = len(words)
            events += [
                Event(self._sse("content_block_stop", {"type": "content_block_stop", "index": 0}), n),
                Event(self._sse("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": stop, "stop_sequence": None},
                                                  "usage": {"output_tokens": n}}), n),
                Event(self._sse("message_stop", {"type": "message_stop"}), n),
            ]
            return self.send_stream(h, model, n_in, events, fault)
        if fault is not None and fault.kind == "malformed":
            return self.send_malformed(h, fault)
        self.bill(model, n_in, len(words))
        message.update(content=[{"type": "text", "text": " ".join(words)}], stop_reason=stop,
                       usage={**message["usage"], "output_tokens": len(words)})
        self.send_json(h, 200, message)
