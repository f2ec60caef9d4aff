"""Fake of OpenAI's chat completions API (also what xAI and the OpenAI-compatible local servers speak).

`POST /v1/chat/completions`, bearer key. Non-streaming: a `chat.completion` object with `usage`.
Streaming (`stream: true`): `data: {chat.completion.chunk}` events, a role chunk, one content chunk
per word, a chunk with `finish_reason`, then, only when `stream_options.include_usage` is true, a
final chunk with empty `choices` and the `usage`, then `data: [DONE]`. With include_usage every
chunk also carries `"usage": null`, as OpenAI sends it. `include_usage_supported=False` makes the
fake behave like a local server that ignores the option (no usage chunk at all).
`usage_in_body=False` leaves `usage` out of non-streamed answers too (some minimal servers).
`reasoning_tokens=R` makes it report reasoning the way xAI does: beside `completion_tokens` (in
`completion_tokens_details.reasoning_tokens`, and counted in `total_tokens`), billed as output.

Input tokens: whitespace words of every message's text + 4 per message + 3.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.base import Event, FakeProvider, Fault, answer, pieces, response_id, words_of

_ERRORS = {  # status: (type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
CREATED = 1_767_225_600


def text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def tokens_in(messages: list[dict[str, Any]]) -> int:
    return sum(words_of(text_of(m)) + 4 for m in messages) + 3


class FakeOpenAI(FakeProvider):
    name = "openai"

    def __init__(self, api_key: str | None = "test-key", *, include_usage_supported: bool = True,
                 reasoning_tokens: int = 0, usage_in_body: bool = True) -> None:
        self.include_usage_supported = include_usage_supported
        self.usage_in_body = usage_in_body
        self.reasoning_tokens = reasoning_tokens
        super().__init__(api_key)

    def authorized(self, h) -> bool:
        return self.api_key is None or h.headers.get("Authorization") == f"Bearer {self.api_key}"

    def send_unauthorized(self, h) -> None:
        # OpenAI's own wording, with the key it was sent quoted back: the text must never reach a tenant.
        sent = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
        self.send_error_status(h, 401, message=f"Incorrect API key provided: {sent}. You can find your API key at "
                                               "https://platform.openai.com/account/api-keys.")

    def error_body(self, status: int, code: str | None, message: str) -> dict[str, Any]:
        kind, default_code = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return {"error": {"message": message, "type": kind, "param": None, "code": code or default_code}}

    def error_event(self, status: int, code: str | None) -> bytes:
        body = self.error_body(status, code, "The server had an error while processing your request.")
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def malformed_event(self) -> bytes:
        return b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choices": [{"delta": {"cont\n\n'

    def missing_fields_body(self) -> dict[str, Any]:
        return {"id": "chatcmpl-missing", "object": "chat.completion", "created": CREATED}

    def handle(self, h, body: dict[str, Any], fault: Fault | None) -> None:
        if urlsplit(h.path).path != "/v1/chat/completions":
            return self.send_error_status(h, 404, "unknown_url", f"Unknown request URL: POST {h.path}")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model or not isinstance(messages, list) or not messages:
            return self.send_error_status(h, 400, message="'model' and a non-empty 'messages' are required")
        if "max_tokens" in body and "max_completion_tokens" in body:
            return self.send_error_status(h, 400, message="max_tokens and max_completion_tokens are exclusive")
        prompt = "\n".join(text_of(m) for m in messages)
        words, truncated = answer(model, prompt, body.get("max_completion_tokens", body.get("max_tokens")))
        finish = "length" if truncated else "stop"
        if fault is not None and fault.kind == "filter":
            words, finish, fault = words[: len(words) // 2], "content_filter", None
        n_in, n_out, n_reasoning = tokens_in(messages), len(words), self.reasoning_tokens
        usage: dict[str, Any] = {"prompt_tokens": n_in, "completion_tokens": n_out,
                                 "total_tokens": n_in + n_out + n_reasoning}
        if n_reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": n_reasoning}
        cid = response_id("chatcmpl-", model, prompt)

        if body.get("stream"):
            asked = bool((body.get("stream_options") or {}).get("include_usage"))
            events = self._events(cid, model, words, finish, usage, self.include_usage_supported and asked,
                                  n_reasoning)
            return self.send_stream(h, model, n_in, events, fault)
        if fault is not None and fault.kind == "malformed":
            return self.send_malformed(h, fault)
        self.bill(model, n_in, n_out + n_reasoning)
        completion: dict[str, Any] = {
            "id": cid, "object": "chat.completion", "created": CREATED, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
        }
        if self.usage_in_body:
            completion["usage"] = usage
        self.send_json(h, 200, completion)

    @staticmethod
    def _events(cid: str, model: str, words: list[str], finish: str, usage: dict[str, Any],
                include_usage: bool, reasoning: int) -> list[Event]:
        def chunk(choices: list[dict[str, Any]], final_usage: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                                    "system_fingerprint": "fp_fake", "choices": choices}
            if include_usage:
                data["usage"] = final_usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        # Reasoning happens before the first visible token.
        events = [Event(chunk(choice({"role": "assistant", "content": "", "refusal": None})), reasoning)]
        events += [Event(chunk(choice({"content": piece})), reasoning + i + 1, content=True)
                   for i, piece in enumerate(pieces(words))]
        done = reasoning + len(words)
        events.append(Event(chunk(choice({}, finish)), done))
        if include_usage:
            events.append(Event(chunk([], usage), done))
        events.append(Event(b"data: [DONE]\n\n", done))
        return events
