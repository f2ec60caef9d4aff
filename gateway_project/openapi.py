"""The gateway's OpenAPI description: one schema class for every DRF view, the bearer scheme, and the
SDK-facing /v1 endpoints, which are plain async views (the fast path) that drf-spectacular cannot see.

The /v1 bodies are described here, next to nothing else, so the description has one place to change
when the wire format does: `llm/openai_wire.py` (OpenAI chat completions) and `llm/anthropic_wire.py`
(Anthropic Messages) are what the descriptions below promise.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

TASKS = ["LLM1_PRIOR_ART", "LLM2_DRAFT", "LLM3_DIAGRAM"]

# The statuses a metered call answers besides success, each in the one error shape (DESIGN §5).
ERROR_STATUSES = {
    "400": "Bad input (a field named in the message).",
    "401": "Missing, invalid, expired or revoked credential.",
    "403": "Not allowed: task, model class or key restriction, suspended tenant.",
    "404": "Unknown task or model, or not yours.",
    "409": "Idempotency-Key reused with another body, or its first request is still running.",
    "413": "The request body is too large.",
    "415": "The body's Content-Type is not one the endpoint reads (JSON, form or multipart).",
    "429": "Quota, concurrency or rate limit (with Retry-After).",
    "502": "Every candidate provider failed.",
    "503": "Providers or metering unavailable.",
    "504": "The provider timed out.",
}


class GatewayAutoSchema(AutoSchema):
    """Views keep their request serializers as nested `InputSerializer` classes (the HackSoft style);
    drf-spectacular would name every one of them "Input" and merge them into one wrong component.
    A nested serializer's component is named after its view instead ("SignupApiInput")."""

    def _get_serializer_name(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> str:
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        cls = serializer if isinstance(serializer, type) else type(serializer)
        outer, _, inner = cls.__qualname__.rpartition(".")
        if outer and "<locals>" not in outer:
            return outer.replace(".", "") + name
        return name

    def get_operation_id(self) -> str:
        # A plain APIView's GET on a collection would be named "..._retrieve", as its item's GET is.
        operation_id = super().get_operation_id()
        if self.method == "GET" and not self.path.rstrip("/").endswith("}") and operation_id.endswith("_retrieve"):
            return operation_id.removesuffix("_retrieve") + "_list"
        return operation_id


BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "A gateway access token (JWT from /api/auth/token/) or an API key (gw_live_...).",
}


class GatewayBearerScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.TenantJWTAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return BEARER_SCHEME


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "type"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}},
    }},
}

ANTHROPIC_ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
    }},
}

MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string"},
    },
}

CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "description": "OpenAI's chat-completions request. Parameters a provider cannot honour are refused with a "
                   "400 naming the parameter and the provider, never dropped; unknown fields are refused.",
    "properties": {
        "model": {"type": "string", "description": "A model of the task's catalog, or 'auto' (policy picks)."},
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number"},
        "n": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "seed": {"type": "integer"},
        "presence_penalty": {"type": "number"},
        "frequency_penalty": {"type": "number"},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"},
        "response_format": {"type": "object"},
        "user": {"type": "string"},
        "metadata": {"type": "object"},
    },
}

USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object"},
    },
}

CHAT_COMPLETION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object"},
            "finish_reason": {"type": ["string", "null"]},
        }}},
        "usage": USAGE,
    },
}

MESSAGES_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "description": "Anthropic's Messages request, served against any configured provider.",
    "properties": {
        "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"],
                                                               "properties": {"role": {"enum": ["user", "assistant"]},
                                                                              "content": {}}}},
        "stream": {"type": "boolean"},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number"},
        "top_k": {"type": "integer"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"},
        "metadata": {"type": "object"},
    },
}

MESSAGE_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "role", "content", "model", "usage"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "content": {"type": "array", "items": {"type": "object"}},
        "model": {"type": "string"},
        "stop_reason": {"type": ["string", "null"]},
        "stop_sequence": {"type": ["string", "null"]},
        "usage": {"type": "object", "properties": {
            "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
            "cache_creation_input_tokens": {"type": ["integer", "null"]},
            "cache_read_input_tokens": {"type": ["integer", "null"]},
        }},
    },
}

MODEL_LIST: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["id", "object"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "owned_by": {"type": "string"}},
    }}},
}


TASK_ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "/api/prior-art/": ("LLM1_PRIOR_ART", {
        "description": {"type": "string", "description": "The invention's disclosure (or pass claims)."},
        "claims": {"type": "string"},
        "date_cutoff": {"type": "string", "format": "date"},
        "jurisdictions": {"type": "array", "items": {"type": "string"}},
        "cpc": {"type": "array", "items": {"type": "string"}},
        "max_results": {"type": "integer", "minimum": 1},
    }),
    "/api/drafting/": ("LLM2_DRAFT", {
        "disclosure": {"type": "string"},
        "prior_art": {"type": "array", "items": {"type": "object"}},
        "claim_style": {"type": "string"},
        "jurisdiction": {"type": "string"},
        "sections": {"type": "array", "items": {"type": "string"}},
    }),
    "/api/diagrams/": ("LLM3_DIAGRAM", {
        "description": {"type": "string"},
        "kinds": {"type": "array", "items": {"type": "string"}},
        "format": {"type": "string", "enum": ["mermaid", "plantuml"]},
        "files": {"type": "integer", "minimum": 1},
    }),
}


def _task_paths() -> dict[str, Any]:
    """The three task pipelines: plain async views (llm/apis_tasks.py), metered by MeteredCall."""
    paths = {}
    for path, (task, fields) in TASK_ENDPOINTS.items():
        body = {"type": "object", "properties": {
            **fields,
            "model": {"type": "string", "description": "A model of the task's catalog, or 'auto'."},
            "max_tokens": {"type": "integer", "minimum": 1},
        }}
        paths[path] = {"post": {
            "operationId": f"task_{task.lower()}",
            "summary": f"Run the {task} pipeline (?stream=1: progress as server-sent events)",
            "tags": ["tasks"],
            "security": [{"bearerAuth": []}],
            "parameters": [
                {"name": "stream", "in": "query", "required": False, "schema": {"type": "string", "enum": ["1"]}},
                {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "requestBody": {"required": True, "content": _json(body)},
            "responses": {
                "200": {"description": "The task's result with its usage.",
                        "content": {**_json({"type": "object"}), "text/event-stream": {"schema": {"type": "string"}}}},
                **_errors("Error"),
            },
        }}
    return paths


def _task_parameter() -> dict[str, Any]:
    return {"name": "task", "in": "path", "required": True, "schema": {"type": "string", "enum": TASKS},
            "description": "The task this base URL meters the call under."}


def _errors(schema_name: str) -> dict[str, Any]:
    return {status: {"description": text, "content": _json(_ref(schema_name))} for status, text in ERROR_STATUSES.items()}


def _v1_paths() -> dict[str, Any]:
    security = [{"bearerAuth": []}]
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                   "description": "A retry with the same key returns the first result and is charged once."}
    chat = {
        "post": {
            "operationId": "v1_chat_completions",
            "summary": "OpenAI-compatible chat completion, metered under the task",
            "tags": ["v1"],
            "security": security,
            "parameters": [_task_parameter(), idempotency],
            "requestBody": {"required": True, "content": _json(_ref("ChatCompletionRequest"))},
            "responses": {
                "200": {"description": "A completion, or with stream: true a text/event-stream of chunks.",
                        "content": {**_json(_ref("ChatCompletion")),
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                **_errors("Error"),
            },
        }
    }
    messages_security = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    messages = {
        "post": {
            "summary": "Anthropic Messages API, metered under the task, against any configured provider",
            "tags": ["v1"],
            "security": messages_security,
            "parameters": [_task_parameter()],
            "requestBody": {"required": True, "content": _json(_ref("MessagesRequest"))},
            "responses": {
                "200": {"description": "A message, or with stream: true Anthropic's event stream.",
                        "content": {**_json(_ref("Message")), "text/event-stream": {"schema": {"type": "string"}}}},
                **_errors("AnthropicError"),
            },
        }
    }
    models = {
        "get": {
            "operationId": "v1_models",
            "summary": "The models the caller may use for the task",
            "tags": ["v1"],
            "security": security,
            "parameters": [_task_parameter()],
            "responses": {"200": {"description": "OpenAI's model list.", "content": _json(_ref("ModelList"))},
                          **{s: v for s, v in _errors("Error").items() if s in ("401", "403", "404")}},
        }
    }
    return {
        "/v1/{task}/chat/completions": chat,
        "/v1/{task}/v1/messages": {"post": {**messages["post"], "operationId": "v1_messages_sdk_path"}},
        "/v1/{task}/messages": {"post": {**messages["post"], "operationId": "v1_messages"}},
        "/v1/{task}/models": models,
    }


def add_v1_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the /v1 endpoints and their bodies."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update({
        "Error": ERROR_BODY, "AnthropicError": ANTHROPIC_ERROR_BODY, "ChatCompletionRequest": CHAT_REQUEST,
        "ChatCompletion": CHAT_COMPLETION, "MessagesRequest": MESSAGES_REQUEST, "Message": MESSAGE_RESPONSE,
        "ModelList": MODEL_LIST,
    })
    schemes = components.setdefault("securitySchemes", {})
    schemes.setdefault("bearerAuth", BEARER_SCHEME)
    schemes["apiKeyHeader"] = {"type": "apiKey", "in": "header", "name": "x-api-key",
                               "description": "An API key (gw_live_...), as the Anthropic SDK sends it."}
    result.setdefault("paths", {}).update({**_task_paths(), **_v1_paths()})
    return result


# What any /api/ operation may answer besides its success, in the one error shape.
API_ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "415", "429")


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every DRF operation documents the error shape for the
    statuses the exception handler can produce, so a client (and schemathesis) can rely on it."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_BODY
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status in API_ERROR_STATUSES:
                responses.setdefault(status, {"description": ERROR_STATUSES[status], "content": _json(_ref("Error"))})
    return result
