"""What the fakes share for tool calls and structured output (each fake speaks its own wire format).

A fake "model" calls a tool when the request offers tools and either forces a call (OpenAI
`tool_choice: "required"` / a named function, Anthropic `tool_choice: any / tool`, Gemini
`functionCallingConfig.mode: ANY`), or leaves the choice to the model and the last user message
names one of the tools. A message that carries tool results is answered in text. Arguments are a
value built from the tool's JSON schema (strings are "fake"), so a test can predict them. JSON output
(`json_object` / a JSON schema) is built the same way; JSON mode without a schema answers
{"answer": <the usual words>}. Output tokens of a tool call or of JSON are the whitespace words
of the JSON text (json.dumps with its default separators), like any other answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def example_value(schema: Any, depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > 8:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        kind = kind.lower()  # Gemini's Schema spells types in upper case
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: example_value(sub, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [example_value(schema.get("items"), depth + 1)]
    return {"string": "fake", "integer": 7, "number": 7, "boolean": True, "null": None}.get(kind, "fake")


def pick_tool(tools: list[tuple[str, Any]], mode: str, forced: str | None, last_user_text: str | None
              ) -> tuple[str, str] | None:
    """(tool name, JSON arguments) the fake model calls, or None to answer in text.

    mode: "auto", "none", "required" (any tool) or "function" (`forced`); `last_user_text` is None
    when the last message carries tool results."""
    if not tools or mode == "none" or last_user_text is None:
        return None
    names = [name for name, _ in tools]
    if mode == "function" and forced in names:
        name = forced
    elif mode == "required":
        name = names[0]
    else:
        name = next((n for n in names if n in last_user_text), None)
        if name is None:
            return None
    schema = dict(tools)[name]
    return name, json.dumps(example_value(schema) or {})


def call_id(prefix: str, name: str, arguments: str, index: int = 0) -> str:
    return prefix + hashlib.sha256(f"{index}:{name}:{arguments}".encode()).hexdigest()[:20]


def fragments(text: str, size: int = 6) -> list[str]:
    """Tool-call arguments streamed in pieces, as the real APIs send them."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def json_answer(schema: Any | None, words: list[str]) -> str:
    return json.dumps(example_value(schema) if schema is not None else {"answer": " ".join(words)})
