"""Fake of OpenAI's chat completions API (also what xAI and the OpenAI-compatible local servers speak).

`POST /v1/chat/completions`, bearer key. Non-streaming: a `chat.completion` object with `usage`.
Streaming (`stream: true`): `data: {chat.completion.chunk}` events, a role chunk, one content chunk
per word, a chunk with `finish_reason`, then, only when `stream_options.include_usage` is true, a
final chunk with empty `choices` and the `usage`, then `data: [DONE]`. With include_usage every
chunk also carries `"usage": null`, as OpenAI sends it. `include_usage_supported=False` makes the
fake behave like a local server that ignores the option (no usage chunk at all).
`usage_in_body=False` leaves `usage` out of non-streamed answers too (some minimal servers).
Tools, JSON output, `stop` and `n` follow tests/fakes/tooling.py: a tool call comes back as
`message.tool_calls` with `finish_reason: "tool_calls"` (streamed: a first `delta.tool_calls` entry
with index, id, type and name, then `function.arguments` fragments), n choices by index, and
`logprobs: true` gets a (made-up) `logprobs.content` list.
`reasoning_tokens=R` makes it report reasoning the way xAI does: beside `completion_tokens` (in
`completion_tokens_details.reasoning_tokens`, and counted in `total_tokens`), billed as output.

Input tokens: whitespace words of every message's text + 4 per message + 3.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.base import Event, FakeProvider, Fault, answer, pieces, response_id, words_of
from tests.fakes.tooling import call_id, fragments, json_answer, pick_tool

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
    # Of the prompt tokens, this many are reported as prompt-cache hits (prompt_tokens_details.cached_tokens).
    cached_tokens = 0

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
        plans = self._plans(body, model, prompt, messages)
        if isinstance(plans, str):
            return self.send_error_status(h, 400, message=plans)
        first = plans[0]
        words, finish = first["words"], first["finish"]
        if fault is not None and fault.kind == "filter":
            words, finish, fault = words[: len(words) // 2], "content_filter", None
            first.update(words=words, finish=finish, text=" ".join(words))
        n_in, n_reasoning = tokens_in(messages), self.reasoning_tokens
        n_out = sum(p["tokens"] for p in plans) if len(plans) > 1 or first["call"] else len(words)
        if first["json"] and len(plans) == 1:
            n_out = first["tokens"]
        usage: dict[str, Any] = {"prompt_tokens": n_in, "completion_tokens": n_out,
                                 "total_tokens": n_in + n_out + n_reasoning}
        if n_reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": n_reasoning}
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, n_in), "audio_tokens": 0}
        cid = response_id("chatcmpl-", model, prompt)

        if body.get("stream"):
            asked = bool((body.get("stream_options") or {}).get("include_usage"))
            if first["call"] or first["json"]:
                events = self._tool_events(cid, model, first, usage, self.include_usage_supported and asked)
            else:
                events = self._events(cid, model, words, finish, usage, self.include_usage_supported and asked,
                                      n_reasoning)
            return self.send_stream(h, model, n_in, events, fault)
        if fault is not None and fault.kind == "malformed":
            return self.send_malformed(h, fault)
        self.bill(model, n_in, n_out + n_reasoning)
        choices = []
        for index, plan in enumerate(plans):
            message: dict[str, Any] = {"role": "assistant", "content": plan["text"], "refusal": None}
            if plan["call"]:
                name, arguments, call = plan["call"]
                message.update(content=None, tool_calls=[{"id": call, "type": "function",
                                                          "function": {"name": name, "arguments": arguments}}])
            logprobs = None
            if body.get("logprobs"):
                logprobs = {"content": [{"token": w, "logprob": -0.5, "bytes": list(w.encode()),
                                         "top_logprobs": []} for w in plan["text"].split()[:3]], "refusal": None}
            choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": plan["finish"]})
        completion: dict[str, Any] = {
            "id": cid, "object": "chat.completion", "created": CREATED, "model": model,
            "system_fingerprint": "fp_fake", "choices": choices,
        }
        if self.usage_in_body:
            completion["usage"] = usage
        self.send_json(h, 200, completion)

    @staticmethod
    def _plans(body: dict[str, Any], model: str, prompt: str, messages: list[Any]) -> list[dict[str, Any]] | str:
        """What each of the n choices will be: a tool call, JSON or words. A string is a 400's message."""
        tools, choice = body.get("tools") or [], body.get("tool_choice", "auto")
        try:
            specs = [(t["function"]["name"], t["function"].get("parameters") or {}) for t in tools]
        except (KeyError, TypeError):
            return "tools: each tool needs function.name"
        forced = None
        if isinstance(choice, dict):
            mode, forced = "function", (choice.get("function") or {}).get("name")
        else:
            mode = choice
        last = messages[-1] if messages else {}
        last_user = text_of(last) if last.get("role") == "user" else None
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        n = body.get("n") or 1
        plans = []
        for index in range(n):
            call = pick_tool(specs, mode, forced, last_user)
            words, truncated = answer(model if index == 0 else f"{model}#{index}", prompt,
                                      body.get("max_completion_tokens", body.get("max_tokens")))
            finish = "length" if truncated else "stop"
            plan: dict[str, Any] = {"call": None, "json": False, "words": words, "finish": finish,
                                    "text": " ".join(words), "tokens": len(words)}
            if call is not None:
                name, arguments = call
                plan.update(call=(name, arguments, call_id("call_", name, arguments, index)), finish="tool_calls",
                            text=None, tokens=words_of(arguments))
            elif fmt.get("type") in ("json_object", "json_schema"):
                text = json_answer(schema, words)
                plan.update(json=True, text=text, finish="stop", tokens=words_of(text))
            else:
                for stop in stops:
                    if stop in plan["text"]:
                        plan["text"] = plan["text"][:plan["text"].index(stop)]
                        plan.update(words=plan["text"].split(), finish="stop", tokens=words_of(plan["text"]))
            plans.append(plan)
        return plans

    @staticmethod
    def _tool_events(cid: str, model: str, plan: dict[str, Any], usage: dict[str, Any],
                     include_usage: bool) -> list[Event]:
        """A streamed tool call (OpenAI's shape: the first delta has the id, type and name with empty
        arguments, the next ones argument fragments by index) or streamed JSON text."""
        def chunk(choices: list[dict[str, Any]], final_usage: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                                    "system_fingerprint": "fp_fake", "choices": choices}
            if include_usage:
                data["usage"] = final_usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        total = plan["tokens"]
        if plan["call"]:
            name, arguments, call = plan["call"]
            events = [Event(chunk(choice({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call, "type": "function", "function": {"name": name, "arguments": ""}}]})), 0)]
            parts = fragments(arguments)
            events += [Event(chunk(choice({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})),
                             words_of("".join(parts[:i + 1])), content=True) for i, part in enumerate(parts)]
        else:
            events = [Event(chunk(choice({"role": "assistant", "content": "", "refusal": None})), 0)]
            parts = fragments(plan["text"])
            events += [Event(chunk(choice({"content": part})), words_of("".join(parts[:i + 1])), content=True)
                       for i, part in enumerate(parts)]
        events.append(Event(chunk(choice({}, plan["finish"])), total))
        if include_usage:
            events.append(Event(chunk([], usage), total))
        events.append(Event(b"data: [DONE]\n\n", total))
        return events

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
