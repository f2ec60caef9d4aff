"""Google Gemini through the `google-genai` SDK (`client.aio`), Gemini API (not Vertex AI).

OpenAI-style messages become Gemini contents: system messages -> `system_instruction`, user ->
role "user", assistant -> role "model". Usage comes from `usage_metadata`: input is
`prompt_token_count` (+ tool-use prompt tokens), output is `candidates_token_count` +
`thoughts_token_count` (thinking is billed as output). In a stream every chunk carries the running
totals, so the last one seen is the usage (never a sum).

The SDK's automatic continuation (3.x re-requests a stream that ended early when it has a
continuation token) and automatic function calling are switched off: one call here is one billed
upstream request, and the router decides about retries. One `genai.Client` per provider instance
and event loop (see `PerLoop`), so each loop's connection pool is closed when that loop shuts down.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from llm.providers._common import MALFORMED_ERRORS, PerLoop, StreamMeter, for_status, for_transport, malformed
from llm.providers.base import (
    ChatRequest,
    ChatResult,
    Choice,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderContentFiltered,
    ProviderError,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llm.providers.scrub import secret_register
from llm.tokenizer import message_text, messages_tokens, text_tokens

# Finish reasons meaning the answer was withheld or cut by a safety / policy filter.
FILTER_REASONS = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                            "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"})
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}  # anything else that is not a filter: "stop"
KEY_REJECTED_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def _name(value: Any) -> str | None:
    """An enum member's value, or the raw string the SDK keeps for values it does not know."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _text(candidate: Any) -> str:
    content = candidate.content
    if content is None or not content.parts:
        return ""
    return "".join(part.text for part in content.parts if part.text and not part.thought)


def _calls(candidate: Any, seen: int = 0) -> list[ToolCall]:
    """The function calls of a candidate, in OpenAI's shape (Gemini may leave out the id: one is made
    from the position, stable for the same answer)."""
    content = candidate.content
    calls = []
    for part in (content.parts or ()) if content is not None else ():
        if part.function_call is not None and part.function_call.name:
            call = part.function_call
            arguments = json.dumps(call.args or {}, separators=(",", ":"))
            call_id = call.id or "call_" + hashlib.sha256(
                f"{seen + len(calls)}:{call.name}:{arguments}".encode()).hexdigest()[:24]
            calls.append(ToolCall(id=call_id, name=call.name, arguments=arguments))
    return calls


def _finish(candidate: Any, calls: list[ToolCall]) -> str:
    reason = _name(candidate.finish_reason) or "STOP"
    return "tool_calls" if calls and reason == "STOP" else FINISH_REASONS.get(reason, "stop")


def _usage(meta: Any) -> Usage | None:
    if meta is None or meta.prompt_token_count is None:
        return None
    # cached_content_token_count is part of prompt_token_count (the total effective prompt).
    return Usage(meta.prompt_token_count + (meta.tool_use_prompt_token_count or 0),
                 (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
                 cached_in=max(0, meta.cached_content_token_count or 0))


def _key_rejected(details: Any) -> bool:
    """The Gemini API answers a wrong or expired key with a 400 INVALID_ARGUMENT, told apart from a bad
    request only by its google.rpc.ErrorInfo reason."""
    error = details.get("error") if isinstance(details, dict) else None
    infos = error.get("details") if isinstance(error, dict) else None
    return isinstance(infos, list) and any(
        isinstance(info, dict) and info.get("reason") in KEY_REJECTED_REASONS for info in infos)


def _blocked(response: Any) -> str | None:
    feedback = response.prompt_feedback
    return _name(feedback.block_reason) if feedback is not None and feedback.block_reason else None


class GeminiProvider:
    name = "gemini"

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float = 60.0) -> None:
        if not api_key:
            raise ValueError("gemini needs an API key")
        self.base_url = base_url
        secret_register(api_key)  # scrubbed from any error text that quotes it (or a ?key= URL)

        def client() -> genai.Client:
            # google-genai switches its async calls to aiohttp whenever aiohttp is installed (the
            # openai SDK's transport needs it), unless given an httpx transport: stay on httpx2,
            # whose errors this provider maps (llm/providers/_common.py).
            http_options = types.HttpOptions(base_url=base_url or None, timeout=int(timeout * 1000),
                                             async_client_args={"transport": httpx2.AsyncHTTPTransport()})
            return genai.Client(api_key=api_key, vertexai=False, http_options=http_options)

        self._clients: PerLoop[genai.Client] = PerLoop(
            client,
            close=lambda client: client.aio.aclose(),
        )

    def count_tokens(self, messages: list[dict[str, Any]], model: str) -> int:
        return messages_tokens(messages, model=model)

    async def aclose(self) -> None:
        """Close the running event loop's client now (it is otherwise closed when its loop shuts down)."""
        await self._clients.aclose()

    def unsupported(self, request: ChatRequest) -> list[str]:
        options = request.options
        refused = [n for n in options.asked() if n in ("logprobs", "top_logprobs", "user", "metadata")]
        if options.parallel_tool_calls is False:
            refused.append("parallel_tool_calls=false")  # Gemini has no switch for one call at a time
        if any(part.get("image_url", {}).get("url", "").startswith(("http://", "https://"))
               for m in request.messages if isinstance(m.get("content"), list) for part in m["content"]
               if part.get("type") == "image_url"):
            refused.append("image_url with an http(s) URL (send a data: URL)")
        return refused

    @staticmethod
    def _parts(message: dict[str, Any], names: dict[str, str]) -> list[types.Part]:
        """One OpenAI-shaped message as Gemini parts: text, inline images, function calls / responses."""
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            name = names.get(message.get("tool_call_id") or "", "")
            return [types.Part(function_response=types.FunctionResponse(
                id=message.get("tool_call_id"), name=name, response={"result": message_text(message)}))]
        parts: list[types.Part] = []
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    parts.append(types.Part(text=part["text"]))
                elif part.get("type") == "image_url":
                    header, _, data = part["image_url"]["url"].partition(",")
                    parts.append(types.Part(inline_data=types.Blob(
                        mime_type=header.removeprefix("data:").removesuffix(";base64"),
                        data=base64.b64decode(data))))
        elif content:
            parts.append(types.Part(text=content))
        for call in message.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
            try:
                args = json.loads(call["function"]["arguments"] or "{}")
            except ValueError:
                args = {"arguments": call["function"]["arguments"]}
            parts.append(types.Part(function_call=types.FunctionCall(
                id=call["id"], name=call["function"]["name"],
                args=args if isinstance(args, dict) else {"value": args})))
        return parts or [types.Part(text="")]

    @classmethod
    def _convert(cls, request: ChatRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
        system: list[str] = []
        contents: list[types.Content] = []
        names: dict[str, str] = {}  # tool call id -> function name (Gemini answers calls by name)
        for message in request.messages:
            role = message.get("role")
            if role in ("system", "developer"):
                system.append(message_text(message))
                continue
            gemini_role = "model" if role == "assistant" else "user"
            parts = cls._parts(message, names)
            if contents and contents[-1].role == gemini_role and role == "tool":
                contents[-1].parts.extend(parts)  # several tool results answer one turn together
            else:
                contents.append(types.Content(role=gemini_role, parts=parts))
        if not contents:
            raise ProviderBadRequest("at least one user or assistant message is required", provider="gemini")
        options = request.options
        config = types.GenerateContentConfig(
            system_instruction="\n\n".join(system) if system else None,
            max_output_tokens=request.max_tokens,
            temperature=request.temperature,
            automatic_continuation=False,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            top_p=options.top_p, seed=options.seed, presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty, stop_sequences=list(options.stop) or None,
            candidate_count=options.n if options.n != 1 else None,
        )
        if options.tools:
            config.tools = [types.Tool(function_declarations=[
                types.FunctionDeclaration(name=t.name, description=t.description or None,
                                          parameters_json_schema=t.parameters) for t in options.tools])]
        if options.tool_choice is not None:
            choice = options.tool_choice
            mode = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[choice.mode]
            config.tool_config = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
                mode=mode, allowed_function_names=[choice.name] if choice.name else None))
        fmt = options.response_format
        if fmt is not None and fmt.type != "text":
            config.response_mime_type = "application/json"
            if fmt.type == "json_schema":
                config.response_json_schema = fmt.schema
        return contents, config

    def _map(self, exc: Exception, *, tokens_in: int = 0, tokens_out: int = 0) -> ProviderError | None:
        tokens = {"tokens_in": tokens_in, "tokens_out": tokens_out}
        if isinstance(exc, genai_errors.APIError):
            status = exc.code if isinstance(exc.code, int) and exc.code >= 400 else 500
            if status == 400 and _key_rejected(exc.details):
                status = 401  # our key, not the caller's request
            detail = " ".join(str(part) for part in (exc.status, exc.message) if part)
            return for_status(self.name, status, detail, **tokens)
        mapped = for_transport(self.name, exc, **tokens)
        if mapped is not None:
            return mapped
        if isinstance(exc, MALFORMED_ERRORS):  # JSONDecodeError, UnknownApiResponseError, pydantic errors
            return malformed(self.name, exc, **tokens)
        return None

    def _filtered(self, why: str, usage: Usage | None, spent: dict[str, int]) -> ProviderContentFiltered:
        if usage is not None:
            spent = {"tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out}
        return ProviderContentFiltered(why, provider=self.name, **spent)

    async def chat(self, request: ChatRequest) -> ChatResult:
        contents, config = self._convert(request)
        client = await self._clients.get()
        try:
            response = await client.aio.models.generate_content(model=request.model, contents=contents,
                                                                      config=config)
        except Exception as exc:
            mapped = self._map(exc)
            if mapped is None:
                raise
            raise mapped from exc
        usage = _usage(response.usage_metadata)
        if blocked := _blocked(response):
            raise self._filtered(f"the prompt was blocked ({blocked})", usage, {"tokens_in": 0, "tokens_out": 0})
        if not response.candidates:
            raise malformed(self.name, "no candidates and no prompt feedback")
        candidates = sorted(response.candidates, key=lambda c: c.index or 0)
        choices = []
        for candidate in candidates:
            calls = _calls(candidate)
            choices.append(Choice(text=_text(candidate), finish_reason=_finish(candidate, calls), tool_calls=calls))
        first, reason = choices[0], _name(candidates[0].finish_reason) or "STOP"
        if usage is None:
            out = "".join(c.text + "".join(t.arguments for t in c.tool_calls) for c in choices)
            usage = Usage(self.count_tokens(request.messages, request.model), text_tokens(out, request.model),
                          estimated=True)
        if reason in FILTER_REASONS:
            raise self._filtered(f"the answer was stopped by the content filter ({reason})", usage, {})
        return ChatResult(text=first.text, finish_reason=first.finish_reason, usage=usage,
                          provider_response_id=response.response_id or "", tool_calls=first.tool_calls,
                          alternatives=choices[1:])

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        contents, config = self._convert(request)
        meter = StreamMeter(self, request)
        client = await self._clients.get()
        try:
            # The request goes out on the first iteration, so a refusal (429, 500...) surfaces below.
            stream = await client.aio.models.generate_content_stream(model=request.model, contents=contents,
                                                                           config=config)
        except Exception as exc:
            mapped = self._map(exc)
            if mapped is None:
                raise
            raise mapped from exc
        reason: str | None = None
        usage: Usage | None = None
        blocked: str | None = None
        called = 0  # Gemini sends each function call whole: one OpenAI tool-call delta each
        try:
            async for chunk in stream:
                meter.started = True
                if (reported := _usage(chunk.usage_metadata)) is not None:
                    usage = reported
                    meter.reported_in, meter.reported_out = reported.tokens_in, reported.tokens_out
                blocked = _blocked(chunk) or blocked
                if chunk.candidates:
                    candidate = chunk.candidates[0]
                    if piece := _text(candidate):
                        meter.add(piece)
                        yield StreamDelta(text=piece)
                    if calls := _calls(candidate, called):
                        meter.add("".join(c.arguments for c in calls))
                        yield StreamDelta(tool_calls=[
                            ToolCallDelta(index=called + i, id=c.id, name=c.name, arguments=c.arguments)
                            for i, c in enumerate(calls)])
                        called += len(calls)
                    reason = _name(candidate.finish_reason) or reason
        except Exception as exc:
            mapped = self._map(exc, **meter.consumed())
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            await stream.aclose()
        if blocked:
            raise self._filtered(f"the prompt was blocked ({blocked})", usage, meter.consumed())
        if reason is None:  # the body ended cleanly but the model never finished: a cut
            raise ProviderConnectionError("the stream ended before the answer finished", provider=self.name,
                                          **meter.consumed())
        if reason in FILTER_REASONS:
            raise self._filtered(f"the answer was stopped by the content filter ({reason})", usage, meter.consumed())
        finish = "tool_calls" if called and reason == "STOP" else FINISH_REASONS.get(reason, "stop")
        yield StreamDelta(finish_reason=finish, usage=usage)
