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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from catalog.selectors import ModelInfo
from gateway_project.errors import BadRequest, Conflict, GatewayError, ServiceUnavailable
from llm import calls, metrics, router
from llm.db import db_step
from llm.providers.base import ChatResult, Provider, ProviderError
from llm.providers.registry import servable
from llm.tokenizer import messages_tokens
from metering import services as metering
from metering.models import UsageLog, UsageReservation
from metering.policy import EnforcementDecision, policy_evaluate
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
    # Task adapters run several steps under one reservation and declare their model classes.
    steps: int | str = 1
    api_calls: int | str | None = None
    restrict_classes: tuple[str, ...] | None = None


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


class _InFlight:
    """Another request holds this Idempotency-Key and is still running: wait (off-thread) and ask again."""


def _replay_lookup(context: TenantContext, key: str, print_: str) -> _Replay | _InFlight | None:
    """The stored response of an earlier call with this key, _InFlight while it runs, None if free."""
    existing = metering.idempotency_lookup(tenant_id=context.tenant_id, key=key, fingerprint=print_)
    if existing is None:
        return None  # never used, or its call failed and freed the key: run the call
    if existing.status == UsageReservation.Status.COMPLETED and existing.response_body is not None:
        return _Replay(status=existing.response_status or 200, body=existing.response_body)
    if existing.status == UsageReservation.Status.ACTIVE:
        return _InFlight()
    return None


def _admit(
    context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int, request_id: str,
    idempotency_key: str | None, print_: str,
) -> _Admitted | _Replay:
    mode = enforcement_mode(context)
    now = timezone.now()
    try:
        if idempotency_key:
            replay = _replay_lookup(context, idempotency_key, print_)
            if replay is not None:
                return replay
        decision = policy_evaluate(
            context=context, task_code=task_code, requested_model=chat.model, tokens_in=tokens_in,
            requested_max_tokens_out=chat.max_tokens, now=now, mode=mode, steps=chat.steps,
            api_calls=chat.api_calls, restrict_classes=chat.restrict_classes,
        )
        if not decision.allowed:
            _refuse(context, decision, request_id, mode, now)
        try:
            admission = metering.usage_admit(
                tenant_id=context.tenant_id, user_id=context.user_id, decision=decision, request_id=request_id,
                mode=mode, now=now, idempotency_key=idempotency_key, fingerprint=print_,
            )
        except metering.IdempotencyInFlight:
            return _InFlight()  # another request took the key first: wait for its answer
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
                                   usage_unavailable=True, steps=chat.steps, api_calls=chat.api_calls,
                                   restrict_classes=chat.restrict_classes)
    except DatabaseError:
        raise ServiceUnavailable("Metering is unavailable and the policy cache is cold.",
                                 code="metering_unavailable", retry_after=5) from None
    if not decision.allowed:
        raise GatewayError(decision.message, code=decision.code, status_code=decision.status)
    return decision


def _settle(admitted: _Admitted, context: TenantContext, request_id: str, outcome: metering.CallOutcome) -> int | None:
    outcome.would_refuse_code = admitted.admission.would_refuse_code if admitted.admission else \
        admitted.decision.would_refuse_code
    try:
        if admitted.admission is not None:
            log = metering.usage_settle(reservation_id=admitted.admission.reservation_id, outcome=outcome)
            return log.quota_tokens_remaining if log is not None else None
    except metering.ReservationLost:
        # Whatever the mode: the call ran and must be charged; the spool replays it exactly once.
        logger.error("reservation of %s lost in a database crash; spooling its usage", request_id)
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


def _candidates(decision: EnforcementDecision, context: TenantContext) -> list[tuple[ModelInfo, Provider]]:
    configured = servable(decision.candidates)
    strategy = router.strategy_for(plan_code=context.plan_code, task_code=decision.task.code)
    ordered = router.order_candidates([m for m, _ in configured], classes=decision.model_classes,
                                      strategy=strategy, tokens_in=decision.tokens_in,
                                      max_tokens_out=decision.max_tokens_out)
    providers = {id(m): p for m, p in configured}
    return [(m, providers[id(m)]) for m in ordered]


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


def _provider_failure(error: ProviderError | None) -> GatewayResponse:
    if error is None:
        return GatewayResponse(503, ServiceUnavailable(
            "No configured and healthy provider serves the allowed model classes.", code="no_provider_available"
        ).payload())
    return GatewayResponse(error.status_code if error.status_code in (400, 502, 503, 504) else 502, {"error": {
        "code": error.kind, "message": "The provider failed: " + error.message, "type": "provider_error"}})


@dataclass
class _Prepared:
    request_id: str
    chat: ChatInput
    admitted: _Admitted
    candidates: list[tuple[ModelInfo, Provider]]
    started: float


# Settlements started for calls whose client left mid-admission: referenced until done (the event
# loop keeps only weak references to tasks).
_orphan_settlements: set[asyncio.Future] = set()


async def _admit_or_release(context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int,
                            request_id: str, idempotency_key: str | None, print_: str
                            ) -> _Admitted | _Replay | _InFlight:
    """`_admit` in a worker thread. A client that disconnects meanwhile cancels us, but not the
    thread: its admission still commits, so it is settled as cancelled as soon as it does (else
    its holds, a concurrency slot among them, would stay taken until the lease expired)."""
    admission = asyncio.ensure_future(db_step(_admit)(context, task_code, chat, tokens_in, request_id,
                                                      idempotency_key, print_))
    try:
        return await asyncio.shield(admission)
    except asyncio.CancelledError:
        def release(done: asyncio.Future) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            admitted = done.result()
            if isinstance(admitted, _Admitted):
                settling = asyncio.ensure_future(db_step(_settle)(
                    admitted, context, request_id,
                    calls.Spend().outcome(UsageLog.Status.CANCELLED, "client_disconnected")))
                _orphan_settlements.add(settling)
                settling.add_done_callback(_orphan_settlements.discard)

        admission.add_done_callback(release)
        raise


async def _prepare(context: TenantContext, task_code: str, body: Any, idempotency_key: str | None
                   ) -> _Prepared | GatewayResponse:
    started = time.monotonic()
    chat = _parse(body)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise BadRequest("Idempotency-Key must be 1 to 200 characters.", code="invalid_idempotency_key")
    if chat.stream and idempotency_key:
        raise BadRequest("Idempotency-Key is not supported with stream=true.", code="invalid_idempotency_key")
    request_id = "req_" + uuid.uuid4().hex
    tokens_in = messages_tokens(chat.messages)
    print_ = fingerprint(task_code, body)
    wait_until = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    try:
        while isinstance(admitted := await _admit_or_release(context, task_code, chat, tokens_in, request_id,
                                                             idempotency_key, print_), _InFlight):
            # Waiting holds no thread and no connection: only a short lookup every 50 ms.
            if time.monotonic() > wait_until:
                raise Conflict("A request with this Idempotency-Key is still running.",
                               code="idempotency_in_progress")
            await asyncio.sleep(0.05)
    except GatewayError as refusal:
        metrics.call_finished(task=task_code, status="REFUSED", code=refusal.code, provider="", tokens_in=0,
                              tokens_out=0, cost_micro_usd=0, overhead_seconds=None)
        # A refused call is in the ledger under this id: the caller gets it too.
        return GatewayResponse(refusal.status_code, refusal.payload(),
                               {**refusal.headers(), "X-Request-ID": request_id})
    if isinstance(admitted, _Replay):
        return GatewayResponse(admitted.status, admitted.body,
                               {"X-Request-ID": admitted.body.get("id", "").removeprefix("chatcmpl-"),
                                "Idempotent-Replayed": "true"})
    return _Prepared(request_id=request_id, chat=chat, admitted=admitted,
                     candidates=_candidates(admitted.decision, context), started=started)


def _headers(prepared: _Prepared, remaining: int | None) -> dict[str, str]:
    headers = {"X-Request-ID": prepared.request_id}
    if remaining is not None:
        headers["X-Quota-Tokens-Remaining"] = str(remaining)
    admitted = prepared.admitted
    warnings = list(admitted.decision.warnings)
    if admitted.mode == "SOFT" and admitted.admission and admitted.admission.would_refuse_code:
        warnings.append(f"{admitted.admission.would_refuse_code}: {admitted.admission.would_refuse_message}")
    if warnings:
        headers["X-Gateway-Warning"] = "; ".join(warnings)[:1000]
    return headers


async def _finish(prepared: _Prepared, context: TenantContext, outcome: metering.CallOutcome, *,
                  shielded: bool = False) -> int | None:
    settle = db_step(_settle)(prepared.admitted, context, prepared.request_id, outcome)
    remaining = await (asyncio.shield(settle) if shielded else settle)
    metrics.IN_FLIGHT.labels(prepared.admitted.decision.task.code).dec()
    provider_seconds = outcome.latency_ms / 1000
    metrics.call_finished(
        task=prepared.admitted.decision.task.code, status=outcome.status, code=outcome.error_code,
        provider=outcome.provider, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out,
        cost_micro_usd=outcome.cost_micro_usd,
        overhead_seconds=time.monotonic() - prepared.started - provider_seconds,
    )
    return remaining


async def chat_completion(
    *, context: TenantContext, task_code: str, body: Any, idempotency_key: str | None = None
) -> GatewayResponse:
    prepared = await _prepare(context, task_code, body, idempotency_key)
    if isinstance(prepared, GatewayResponse):
        return prepared
    if prepared.chat.stream:
        raise BadRequest("Use chat_completion_stream for stream=true.", code="invalid_body")  # pragma: no cover
    decision = prepared.admitted.decision
    metrics.IN_FLIGHT.labels(decision.task.code).inc()
    spend = calls.Spend()
    try:
        result = await calls.chat_with_fallback(prepared.candidates, prepared.chat.messages,
                                                decision.max_tokens_out, prepared.chat.temperature, spend,
                                                decision.task.code)
    except calls.AllCandidatesFailed as failure:
        response = _provider_failure(failure.last)
        outcome = spend.outcome(UsageLog.Status.ERROR, response.body["error"]["code"])
    except asyncio.CancelledError:
        # The client went away: settle what was consumed, then let the cancellation through.
        await _finish(prepared, context, spend.outcome(UsageLog.Status.CANCELLED, "client_disconnected"),
                      shielded=True)
        raise
    else:
        served = spend.attempts[-1].model
        response = GatewayResponse(200, _completion_body(prepared.request_id, served, result, int(time.time())))
        outcome = spend.outcome(UsageLog.Status.SUCCESS)
        if idempotency_key is not None:
            # Kept only for a retry with the same key to replay: a call without one leaves no copy
            # of the generated text in the database (and costs no JSON write).
            outcome.response_status, outcome.response_body = 200, response.body
    remaining = await _finish(prepared, context, outcome)
    response.headers.update(_headers(prepared, remaining))
    return response


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def chat_completion_stream(
    *, context: TenantContext, task_code: str, body: Any, idempotency_key: str | None = None
) -> GatewayResponse | tuple[AsyncIterator[bytes], dict[str, str]]:
    """Server-sent events in OpenAI's chunk format. Refusals come back as a plain error response
    before any event; after the first event, errors are reported in-band and the stream ends."""
    prepared = await _prepare(context, task_code, body, idempotency_key)
    if isinstance(prepared, GatewayResponse):
        return prepared
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if isinstance(body, dict) else False
    metrics.IN_FLIGHT.labels(prepared.admitted.decision.task.code).inc()
    return _Events(prepared, context, include_usage), _headers(prepared, None)


class _Events:
    """The events of one admitted stream. Closing it settles the call even if nobody ever
    iterated it (the client left before the first byte): a generator that never started would
    never run its `finally`, and the call's holds would wait for the lease to expire."""

    def __init__(self, prepared: _Prepared, context: TenantContext, include_usage: bool) -> None:
        self._prepared, self._context = prepared, context
        self._events = _stream_events(prepared, context, include_usage)
        self._started = False

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        return await self._events.__anext__()

    async def aclose(self) -> None:
        if not self._started:
            self._started = True
            await _finish(self._prepared, self._context,
                          calls.Spend().outcome(UsageLog.Status.CANCELLED, "client_disconnected"), shielded=True)
        await self._events.aclose()


async def _stream_events(prepared: _Prepared, context: TenantContext, include_usage: bool) -> AsyncIterator[bytes]:
    decision = prepared.admitted.decision
    spend, state = calls.Spend(), calls.StreamState()
    created = int(time.time())
    chunk_id = f"chatcmpl-{prepared.request_id}"
    outcome: metering.CallOutcome | None = None
    renew_every = max(1.0, settings.RESERVATION_LEASE_SECONDS / 3)
    last_renewal = time.monotonic()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        model = spend.attempts[-1].model.model_name if spend.attempts else ""
        return _sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    try:
        first = True
        try:
            async for piece in calls.stream_with_fallback(
                prepared.candidates, prepared.chat.messages, decision.max_tokens_out, prepared.chat.temperature,
                spend, state, decision.task.code,
            ):
                if first:
                    yield chunk({"role": "assistant", "content": ""})
                    first = False
                yield chunk({"content": piece})
                if time.monotonic() - last_renewal > renew_every and prepared.admitted.admission:
                    # A long stream renews its lease so expiry never releases it mid-call.
                    await db_step(metering.reservation_renew)(
                        reservation_id=prepared.admitted.admission.reservation_id)
                    last_renewal = time.monotonic()
        except calls.AllCandidatesFailed as failure:
            failed = _provider_failure(failure.last)
            outcome = spend.outcome(UsageLog.Status.ERROR, failed.body["error"]["code"])
            yield _sse(failed.body)
            yield b"data: [DONE]\n\n"
            return
        if first:
            yield chunk({"role": "assistant", "content": ""})
        outcome = spend.outcome(UsageLog.Status.SUCCESS)
        yield chunk({}, state.finish_reason)
        if include_usage:
            yield _sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                        "model": spend.attempts[-1].model.model_name, "choices": [],
                        "usage": {"prompt_tokens": outcome.tokens_in, "completion_tokens": outcome.tokens_out,
                                  "total_tokens": outcome.tokens_in + outcome.tokens_out}})
        yield b"data: [DONE]\n\n"
    finally:
        if outcome is None:
            # Closed before the end: the client disconnected (the upstream stream is closed with us).
            outcome = spend.outcome(UsageLog.Status.CANCELLED, "client_disconnected")
        await _finish(prepared, context, outcome, shielded=True)
