"""The metered request pipeline (DESIGN.md §5):

identity -> policy -> admission (one short txn) -> provider (no DB held) -> settlement (one short txn)

Database work runs in `db_step` blocks between awaits; nothing holds a connection or a
transaction while a provider is awaited.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from catalog.selectors import ModelInfo
from gateway_project.errors import BadRequest, Conflict, GatewayError, ServiceUnavailable
from llm.db import db_step
from llm.providers.base import ChatRequest, ChatResult, ProviderError
from llm.providers.registry import provider_get
from llm.tokenizer import messages_tokens
from metering import services as metering
from metering.models import Metric, UsageLog, UsageMeter, UsageReservation
from metering.policy import EnforcementDecision, policy_evaluate
from metering.policy_keys import POLICY_KEYS, KeyKind
from tenants.selectors import TenantContext

logger = logging.getLogger("gateway.llm")


@dataclass
class GatewayResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ChatInput:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float | None
    stream: bool


def _parse(body: Any) -> ChatInput:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", code="invalid_messages")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in {"system", "user", "assistant", "developer",
                                                                          "tool"}:
            raise BadRequest("Each message needs a 'role' of system, user, assistant, developer or tool.",
                             code="invalid_messages")
        if not isinstance(message.get("content", ""), (str, list)):
            raise BadRequest("A message's 'content' must be a string or a list of parts.", code="invalid_messages")
    model = body.get("model", "auto")
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string.", code="invalid_model")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer.", code="invalid_max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))):
        raise BadRequest("'temperature' must be a number.", code="invalid_temperature")
    stream = bool(body.get("stream", False))
    return ChatInput(model=model or "auto", messages=messages, max_tokens=max_tokens, temperature=temperature,
                     stream=stream)


def fingerprint(task_code: str, body: Any) -> str:
    return hashlib.sha256((task_code + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def enforcement_mode(context: TenantContext) -> str:
    return context.enforcement_mode or settings.GATEWAY_ENFORCEMENT_MODE


@dataclass
class _Admitted:
    decision: EnforcementDecision
    admission: metering.Admission | None  # None: metering DB down, failing open (SHADOW/SOFT)
    mode: str
    now: datetime


@dataclass
class _Replay:
    status: int
    body: dict[str, Any]


_ACCESS_STATUS = {"feature_not_in_plan": 403, "task_not_in_plan": 403, "model_class_not_allowed": 403,
                  "model_not_found": 404, "input_too_large": 413, "task_not_found": 404}


def _refuse(context: TenantContext, decision: EnforcementDecision, request_id: str, mode: str, now: datetime) -> None:
    if decision.task is not None:
        metering.usage_log_refusal(
            request_id=request_id, tenant_id=context.tenant_id, user_id=context.user_id, task_id=decision.task.id,
            feature_code=decision.task.feature_code, code=decision.code, mode=mode, now=now,
        )
    raise GatewayError(decision.message, code=decision.code, status_code=decision.status,
                       retry_after=decision.retry_after)


def _replay_or_wait(context: TenantContext, key: str, print_: str) -> _Replay | None:
    """Return the stored response of an earlier call with this key, waiting while it runs."""
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    while True:
        existing = metering.idempotency_lookup(tenant_id=context.tenant_id, key=key, fingerprint=print_)
        if existing is None:
            return None  # free (never used, or its call failed): run the call
        if existing.status == UsageReservation.Status.COMPLETED and existing.response_body is not None:
            return _Replay(status=existing.response_status or 200, body=existing.response_body)
        if existing.status != UsageReservation.Status.ACTIVE:
            return None
        if time.monotonic() > deadline:
            raise Conflict("A request with this Idempotency-Key is still running.", code="idempotency_in_progress")
        time.sleep(0.05)


def _admit(
    context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int, request_id: str,
    idempotency_key: str | None, print_: str,
) -> _Admitted | _Replay:
    mode = enforcement_mode(context)
    while True:
        now = timezone.now()
        try:
            if idempotency_key:
                replay = _replay_or_wait(context, idempotency_key, print_)
                if replay is not None:
                    return replay
            decision = policy_evaluate(
                context=context, task_code=task_code, requested_model=chat.model, tokens_in=tokens_in,
                requested_max_tokens_out=chat.max_tokens, now=now, mode=mode,
            )
            if not decision.allowed:
                _refuse(context, decision, request_id, mode, now)
            try:
                admission = metering.usage_admit(
                    tenant_id=context.tenant_id, user_id=context.user_id, decision=decision, request_id=request_id,
                    mode=mode, now=now, idempotency_key=idempotency_key, fingerprint=print_,
                )
            except metering.IdempotencyInFlight:
                continue  # another request took the key first: wait for its answer
            except GatewayError as refusal:
                metering.usage_log_refusal(
                    request_id=request_id, tenant_id=context.tenant_id, user_id=context.user_id,
                    task_id=decision.task.id, feature_code=decision.task.feature_code, code=refusal.code, mode=mode,
                    now=now,
                )
                raise
            if decision.would_refuse_code and not admission.would_refuse_code:
                admission.would_refuse_code = decision.would_refuse_code
            return _Admitted(decision=decision, admission=admission, mode=mode, now=now)
        except DatabaseError:
            if mode == "HARD":
                logger.exception("metering database unavailable; refusing (HARD mode)")
                raise ServiceUnavailable("Metering is unavailable; try again shortly.", code="metering_unavailable",
                                         retry_after=5) from None
            # SHADOW/SOFT fail open: the call runs; its usage is spooled and recorded later.
            logger.error("metering database unavailable; failing open in %s mode", mode)
            decision = _decision_without_db(context, task_code, chat, tokens_in, now, mode)
            return _Admitted(decision=decision, admission=None, mode=mode, now=now)


def _decision_without_db(context, task_code, chat, tokens_in, now, mode) -> EnforcementDecision:
    # Rules and catalog come from the shared cache; only the meters were unreachable.
    try:
        decision = policy_evaluate(context=context, task_code=task_code, requested_model=chat.model,
                                   tokens_in=tokens_in, requested_max_tokens_out=chat.max_tokens, now=now, mode=mode,
                                   usage_unavailable=True)
    except DatabaseError:
        raise ServiceUnavailable("Metering is unavailable and the policy cache is cold.",
                                 code="metering_unavailable", retry_after=5) from None
    if not decision.allowed:
        raise GatewayError(decision.message, code=decision.code, status_code=decision.status)
    return decision


def _quota_remaining(admission: metering.Admission | None) -> int | None:
    if admission is None:
        return None
    rows = UsageMeter.objects.filter(holds__reservation_id=admission.reservation_id, metric=Metric.TOKENS).values_list(
        "used", "reserved", "holds__limit_value", "holds__policy_key"
    )
    remaining = [limit - used - reserved for used, reserved, limit, key in rows
                 if POLICY_KEYS[key].kind == KeyKind.QUOTA]
    return max(0, min(remaining)) if remaining else None


def _settle(admitted: _Admitted, context: TenantContext, request_id: str, outcome: metering.CallOutcome) -> int | None:
    outcome.would_refuse_code = admitted.admission.would_refuse_code if admitted.admission else \
        admitted.decision.would_refuse_code
    try:
        if admitted.admission is not None:
            metering.usage_settle(reservation_id=admitted.admission.reservation_id, outcome=outcome)
            return _quota_remaining(admitted.admission)
    except DatabaseError:
        if admitted.mode == "HARD":
            raise
        logger.error("metering database unavailable at settlement; spooling usage of %s", request_id)
    from metering.spool import spool_write

    spool_write(
        request_id=request_id, tenant_id=context.tenant_id, user_id=context.user_id, task_id=admitted.decision.task.id,
        feature_code=admitted.decision.task.feature_code, mode=admitted.mode, admitted_at=admitted.now,
        holds=admitted.decision.holds, outcome=outcome, would_refuse_code=outcome.would_refuse_code,
    )
    return None


def _candidates(decision: EnforcementDecision) -> list[tuple[ModelInfo, Any]]:
    return [(m, p) for m in decision.candidates if (p := provider_get(m.provider)) is not None]


def _completion_body(request_id: str, model: ModelInfo, result: ChatResult, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": result.usage.tokens_in, "completion_tokens": result.usage.tokens_out,
                  "total_tokens": result.usage.tokens_in + result.usage.tokens_out},
        "system_fingerprint": f"{model.provider}:{model.model_class}",
    }


async def chat_completion(
    *, context: TenantContext, task_code: str, body: Any, idempotency_key: str | None = None
) -> GatewayResponse:
    chat = _parse(body)
    if chat.stream:
        raise BadRequest("Streaming is not available on this gateway yet; send stream=false.",
                         code="streaming_not_supported")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise BadRequest("Idempotency-Key must be 1 to 200 characters.", code="invalid_idempotency_key")
    request_id = "req_" + uuid.uuid4().hex
    tokens_in = messages_tokens(chat.messages)
    print_ = fingerprint(task_code, body)
    try:
        admitted = await db_step(_admit)(context, task_code, chat, tokens_in, request_id, idempotency_key,
                                               print_)
    except GatewayError as refusal:
        # A refused call is in the ledger under this id: the caller gets it too.
        return GatewayResponse(refusal.status_code, refusal.payload(),
                               {**refusal.headers(), "X-Request-ID": request_id})
    if isinstance(admitted, _Replay):
        return GatewayResponse(admitted.status, admitted.body,
                               {"X-Request-ID": admitted.body.get("id", "").removeprefix("chatcmpl-"),
                                "Idempotent-Replayed": "true"})
    decision = admitted.decision
    candidates = _candidates(decision)
    started = time.monotonic()
    outcome = metering.CallOutcome(status=UsageLog.Status.ERROR, error_code="no_provider_available")
    response: GatewayResponse
    try:
        if not candidates:
            response = GatewayResponse(503, ServiceUnavailable(
                "No configured provider serves the allowed model classes.", code="no_provider_available"
            ).payload())
        else:
            model, provider = candidates[0]
            outcome = _outcome_for(model, 0, 0, 0, UsageLog.Status.ERROR, "")
            try:
                result = await provider.chat(ChatRequest(model=model.model_name, messages=chat.messages,
                                                         max_tokens=decision.max_tokens_out,
                                                         temperature=chat.temperature))
            except ProviderError as error:
                outcome = _outcome_for(model, error.tokens_in, error.tokens_out, time.monotonic() - started,
                                       UsageLog.Status.ERROR, error.kind)
                response = GatewayResponse(error.status_code, {"error": {
                    "code": error.kind, "message": "The provider failed: " + error.message, "type": "provider_error"}})
            else:
                outcome = _outcome_for(model, result.usage.tokens_in, result.usage.tokens_out,
                                       time.monotonic() - started, UsageLog.Status.SUCCESS, "")
                outcome.usage_estimated = result.usage.estimated
                response = GatewayResponse(200, _completion_body(request_id, model, result, int(time.time())))
                outcome.response_status, outcome.response_body = 200, response.body
    except asyncio.CancelledError:
        # The client went away: settle what was consumed, then let the cancellation through.
        outcome.status, outcome.error_code = UsageLog.Status.CANCELLED, "client_disconnected"
        outcome.latency_ms = int((time.monotonic() - started) * 1000)
        await asyncio.shield(db_step(_settle)(admitted, context, request_id, outcome))
        raise
    remaining = await db_step(_settle)(admitted, context, request_id, outcome)
    response.headers["X-Request-ID"] = request_id
    if remaining is not None:
        response.headers["X-Quota-Tokens-Remaining"] = str(remaining)
    warnings = list(decision.warnings)
    if admitted.mode == "SOFT" and admitted.admission and admitted.admission.would_refuse_code:
        warnings.append(f"{admitted.admission.would_refuse_code}: {admitted.admission.would_refuse_message}")
    if warnings:
        response.headers["X-Gateway-Warning"] = "; ".join(warnings)[:1000]
    return response


def _outcome_for(model: ModelInfo, tokens_in: int, tokens_out: int, elapsed: float, status: str,
                 error_code: str) -> metering.CallOutcome:
    return metering.CallOutcome(
        status=status, provider=model.provider, model_name=model.model_name, model_class=model.model_class,
        tokens_in=tokens_in, tokens_out=tokens_out,
        cost_micro_usd=model.cost_micro_usd(tokens_in=tokens_in, tokens_out=tokens_out),
        api_calls=1, latency_ms=int(elapsed * 1000), error_code=error_code,
    )
