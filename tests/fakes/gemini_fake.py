"""Fake of the Gemini API (Google AI, `generativelanguage.googleapis.com`).

`POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse` (and the same under
`/v1/`, which google-genai 3.x uses by default), key in the
`x-goog-api-key` header (or `?key=`). Request: `contents` (roles "user" / "model" only, each with
text `parts`), optional `systemInstruction`, `generationConfig.maxOutputTokens`. Response: a
`GenerateContentResponse` with `candidates[0].content.parts`, `finishReason` and `usageMetadata`
(`promptTokenCount`, `candidatesTokenCount`, `totalTokenCount`, and `thoughtsTokenCount` when the
fake is made to "think", counted from the first chunk). The stream sends one `data: {...}` event
per word; like the real API every event carries `usageMetadata` with the running totals (not
increments), and the last event carries the final text piece, the `finishReason` and the final usage.

Input tokens: whitespace words of every text part (contents and system instruction) + 1 per content.
Output tokens billed: candidates + thoughts.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.base import Event, FakeProvider, Fault, answer, pieces, response_id, words_of
from tests.fakes.tooling import fragments, json_answer, pick_tool

_ROUTE = re.compile(r"^/(?:v1|v1beta)/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _texts(content: Any) -> list[str] | None:
    """The text of each part of a Content (text; inlineData images from the user; functionCall parts
    from the model; functionResponse parts from the user, by name), or None when it is not valid."""
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
        return None
    role, texts = content.get("role"), []
    for part in content["parts"]:
        if not isinstance(part, dict):
            return None
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif role == "user" and isinstance(part.get("inlineData"), dict) \
                and (part["inlineData"].get("mimeType") or part["inlineData"].get("mime_type")):
            texts.append("")
        elif role == "model" and isinstance(part.get("functionCall"), dict) and part["functionCall"].get("name"):
            texts.append(json.dumps(part["functionCall"].get("args") or {}))
        elif role == "user" and isinstance(part.get("functionResponse"), dict) \
                and part["functionResponse"].get("name") and isinstance(part["functionResponse"].get("response"), dict):
            texts.append(json.dumps(part["functionResponse"]["response"]))
        else:
            return None
    return texts


def _answers_calls(content: dict[str, Any]) -> bool:
    return any("functionResponse" in part for part in content["parts"])


class FakeGemini(FakeProvider):
    """Tools (`tools[].functionDeclarations` with `parametersJsonSchema` or `parameters`,
    `toolConfig.functionCallingConfig` mode AUTO / ANY / NONE and `allowedFunctionNames`), JSON output
    (`generationConfig.responseMimeType: application/json`, `responseJsonSchema` or `responseSchema`),
    `stopSequences` and `candidateCount` follow tests/fakes/tooling.py. A call is a `functionCall`
    part (name and args, no id, as the Gemini API answers), sent whole in one stream event."""

    name = "gemini"
    # Of the prompt tokens, this many are reported as cached (usageMetadata.cachedContentTokenCount).
    cached_tokens = 0

    def __init__(self, api_key: str | None = "test-key", *, thoughts_tokens: int = 0) -> None:
        self.thoughts_tokens = thoughts_tokens  # billed as output, reported as thoughtsTokenCount
        super().__init__(api_key)

    def authorized(self, h) -> bool:
        if self.api_key is None:
            return True
        query_key = parse_qs(urlsplit(h.path).query).get("key", [None])[0]
        return self.api_key in (h.headers.get("x-goog-api-key"), query_key)

    def send_unauthorized(self, h) -> None:
        # What the Gemini API answers to a wrong key: a 400, told apart from a bad request only by its ErrorInfo.
        self.send_json(h, 400, {"error": {
            "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}],
        }})

    def error_body(self, status: int, code: str | None, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "status": code or _STATUS.get(status, "UNKNOWN")}}

    def error_event(self, status: int, code: str | None) -> bytes:
        return b"data: " + json.dumps(self.error_body(status, code, "The model is overloaded.")).encode() + b"\r\n\r\n"

    def malformed_event(self) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": " brok\r\n\r\n'

    def missing_fields_body(self) -> dict[str, Any]:
        return {"modelVersion": "fake", "responseId": "missing"}

    def truncated_body(self) -> bytes:
        return b'{"candidates": [{"content": {"parts": [{"text": "trunc'

    @staticmethod
    def _plans(body: dict[str, Any], model: str, prompt: str, contents: list[Any], config: dict[str, Any]
               ) -> list[dict[str, Any]] | str | None:
        """Each candidate's parts when the request uses tools, JSON, stop sequences or several
        candidates; None for the plain path; a string for a 400."""
        declarations = [d for tool in body.get("tools") or () for d in tool.get("functionDeclarations") or ()]
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        mime = config.get("responseMimeType")
        stops = config.get("stopSequences") or []
        count = config.get("candidateCount") or 1
        if not (declarations or mime or stops or count != 1):
            return None
        if mime not in (None, "text/plain", "application/json"):
            return "responseMimeType must be text/plain or application/json"
        allowed = calling.get("allowedFunctionNames") or []
        mode = {"AUTO": "auto", "ANY": "required", "NONE": "none", None: "auto"}.get(calling.get("mode"))
        if mode is None:
            return "functionCallingConfig.mode must be AUTO, ANY or NONE"
        if mode == "required" and len(allowed) == 1:
            mode = "function"
        # Proto JSON: a field may come in lowerCamelCase or as its proto name (google-genai sends the latter
        # for the JSON-schema fields).
        specs = [(d["name"], d.get("parametersJsonSchema") or d.get("parameters_json_schema") or d.get("parameters")
                  or {}) for d in declarations]
        last = contents[-1]
        last_user = None if _answers_calls(last) or last.get("role") != "user" else " ".join(_texts(last) or [])
        schema = config.get("responseJsonSchema") or config.get("response_json_schema") or config.get("responseSchema")
        plans = []
        for index in range(count):
            words, truncated = answer(model if index == 0 else f"{model}#{index}", prompt,
                                      config.get("maxOutputTokens"))
            call = pick_tool(specs, mode, allowed[0] if allowed else None, last_user)
            if call is not None:
                name, arguments = call
                plans.append({"parts": [{"functionCall": {"name": name, "args": json.loads(arguments)}}],
                              "tokens": words_of(arguments), "finish": "STOP", "text": arguments})
                continue
            text = json_answer(schema, words) if mime == "application/json" else " ".join(words)
            finish = "MAX_TOKENS" if truncated and mime != "application/json" else "STOP"
            for stop in stops:
                if stop in text:
                    text, finish = text[:text.index(stop)], "STOP"
            plans.append({"parts": [{"text": text}], "tokens": words_of(text), "finish": finish, "text": text})
        return plans

    def _send_planned(self, h, body: dict[str, Any], model: str, prompt: str, n_in: int,
                      plans: list[dict[str, Any]], stream: bool, fault: Fault | None) -> None:
        n_out = sum(p["tokens"] for p in plans)
        usage = {"promptTokenCount": n_in, "candidatesTokenCount": n_out, "totalTokenCount": n_in + n_out}
        rid = response_id("", model, prompt)
        candidates = [{"content": {"parts": p["parts"], "role": "model"}, "finishReason": p["finish"], "index": i}
                      for i, p in enumerate(plans)]
        if stream:
            plan = plans[0]
            if "functionCall" in plan["parts"][0]:
                chunks = [(plan["parts"], n_out)]  # a function call arrives whole
            else:
                parts = fragments(plan["text"])
                chunks = [([{"text": part}], words_of("".join(parts[:i + 1]))) for i, part in enumerate(parts)]
            events = []
            for i, (parts, done) in enumerate(chunks):
                candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
                if i == len(chunks) - 1:
                    candidate["finishReason"] = plan["finish"]
                data = {"candidates": [candidate], "modelVersion": model, "responseId": rid,
                        "usageMetadata": {**usage, "candidatesTokenCount": done, "totalTokenCount": n_in + done}}
                events.append(Event(b"data: " + json.dumps(data).encode() + b"\r\n\r\n", done, content=True))
            return self.send_stream(h, model, n_in, events, fault)
        if fault is not None and fault.kind == "malformed":
            return self.send_malformed(h, fault)
        self.bill(model, n_in, n_out)
        self.send_json(h, 200, {"candidates": candidates, "usageMetadata": usage, "modelVersion": model,
                                "responseId": rid})

    def handle(self, h, body: dict[str, Any], fault: Fault | None) -> None:
        url = urlsplit(h.path)
        route = _ROUTE.match(url.path)
        if route is None:
            return self.send_error_status(h, 404, message=f"Unknown path {url.path}")
        model, stream = route["model"], route["method"] == "streamGenerateContent"
        if stream and parse_qs(url.query).get("alt") != ["sse"]:
            return self.send_error_status(h, 400, message="this fake only streams with alt=sse")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return self.send_error_status(h, 400, message="* contents: must not be empty")
        texts: list[str] = []
        for content in contents:
            parts = _texts(content)
            if parts is None or content.get("role") not in ("user", "model"):
                return self.send_error_status(
                    h, 400, message="Please use a valid role: user, model, with text parts.")
            texts += parts
        system = body.get("systemInstruction")
        if system is not None:
            system_texts = _texts(system)
            if system_texts is None:
                return self.send_error_status(h, 400, message="Invalid systemInstruction")
            texts = system_texts + texts
        config = body.get("generationConfig") or {}
        prompt = "\n".join(texts)
        words, truncated = answer(model, prompt, config.get("maxOutputTokens"))
        finish = "MAX_TOKENS" if truncated else "STOP"
        if fault is not None and fault.kind == "filter":
            words, finish, fault = words[: len(words) // 2], "SAFETY", None
        n_in = sum(words_of(t) for t in texts) + len(contents)
        plans = self._plans(body, model, prompt, contents, config)
        if isinstance(plans, str):
            return self.send_error_status(h, 400, message=plans)
        if plans is not None:
            return self._send_planned(h, body, model, prompt, n_in, plans, stream, fault)
        thoughts = self.thoughts_tokens
        rid = response_id("", model, prompt)

        def usage(candidates: int) -> dict[str, Any]:
            data = {"promptTokenCount": n_in, "candidatesTokenCount": candidates,
                    "totalTokenCount": n_in + candidates + thoughts,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n_in}]}
            if thoughts:
                data["thoughtsTokenCount"] = thoughts
            if self.cached_tokens:  # part of promptTokenCount, as the real API reports it
                data["cachedContentTokenCount"] = min(self.cached_tokens, n_in)
            return data

        def response(text: str, candidates: int, finish_reason: str | None) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if finish_reason:
                candidate["finishReason"] = finish_reason
                if finish_reason == "SAFETY":
                    candidate["safetyRatings"] = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                                   "probability": "HIGH", "blocked": True}]
            return {"candidates": [candidate], "usageMetadata": usage(candidates),
                    "modelVersion": model, "responseId": rid}

        if stream:
            events = []
            chunks = pieces(words) or [""]
            for i, piece in enumerate(chunks):
                last = i == len(chunks) - 1
                done = min(i + 1, len(words))
                data = json.dumps(response(piece, done, finish if last else None)).encode()
                events.append(Event(b"data: " + data + b"\r\n\r\n", done + thoughts, content=bool(words)))
            return self.send_stream(h, model, n_in, events, fault)
        if fault is not None and fault.kind == "malformed":
            return self.send_malformed(h, fault)
        self.bill(model, n_in, len(words) + thoughts)
        self.send_json(h, 200, response(" ".join(words), len(words), finish))
