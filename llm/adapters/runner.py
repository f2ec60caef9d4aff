"""The full pipeline for a task adapter: identity -> policy -> admission (one reservation for the
whole run) -> adapter steps -> settlement, as JSON or as server-sent progress events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gateway_project.errors import BadRequest, GatewayError
from llm import calls, gateway, metrics
from llm.adapters.base import AdapterRun, BudgetExhausted, TaskAdapter
from llm.db import db_step
from llm.tokenizer import text_tokens
from metering import services as metering
from metering.models import UsageLog
from tenants.selectors import TenantContext


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def run_task(*, context: TenantContext, adapter: TaskAdapter, payload: Any, stream: bool
                   ) -> gateway.GatewayResponse | tuple[AsyncIterator[bytes], dict[str, str]]:
    started = time.monotonic()
    parsed = adapter.parse(payload)
    model = payload.get("model", "auto") if isinstance(payload, dict) else "auto"
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string.", code="invalid_model")
    max_tokens = payload.get("max_tokens") if isinstance(payload, dict) else None
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer.", code="invalid_max_tokens")
    chat = gateway.ChatInput(
        model=model, messages=[{"role": "user", "content": adapter.input_text(parsed)}], max_tokens=max_tokens,
        temperature=None, stream=stream, steps=adapter.steps_key or adapter.fixed_steps,
        api_calls="max_api_calls", restrict_classes=adapter.model_classes,
    )
    request_id = "req_" + uuid.uuid4().hex
    tokens_in = text_tokens(adapter.input_text(parsed))
    try:
        admitted = await db_step(gateway._admit)(context, adapter.task_code, chat, tokens_in, request_id, None, "")
    except GatewayError as refusal:
        return gateway.GatewayResponse(refusal.status_code, refusal.payload(),
                                       {**refusal.headers(), "X-Request-ID": request_id})
    prepared = gateway._Prepared(request_id=request_id, chat=chat, admitted=admitted,
                                 candidates=gateway._candidates(admitted.decision, context), started=started)
    limits = {k: int(v.value) for k, v in admitted.decision.limits.items()
              if isinstance(v.value, int) and ":" not in k}
    metrics.IN_FLIGHT.labels(adapter.task_code).inc()
    try:
        adapter.check_limits(parsed, limits)
    except GatewayError as refusal:
        # Nothing ran: the reservation is settled with no usage and the refusal's code.
        await gateway._finish(prepared, context, calls.Spend().outcome(UsageLog.Status.ERROR, refusal.code))
        return gateway.GatewayResponse(refusal.status_code, refusal.payload(),
                                       {**refusal.headers(), "X-Request-ID": request_id})
    events: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    async def renew() -> None:
        if admitted.admission is not None:
            await db_step(metering.reservation_renew)(reservation_id=admitted.admission.reservation_id)

    run = AdapterRun(task_code=adapter.task_code, request_id=request_id, candidates=prepared.candidates,
                     limits=limits, max_tokens_out=admitted.decision.max_tokens_out, steps_key=adapter.steps_key,
                     emit=lambda e: events.put_nowait(("progress", e)), renew=renew)

    async def execute() -> tuple[int, dict[str, Any]]:
        status, error_code = UsageLog.Status.SUCCESS, ""
        try:
            try:
                result = await adapter.run(run, parsed)
            except BudgetExhausted as stop:
                run.notes.append(f"Stopped at {stop.key} = {stop.limit}; returning what was produced so far.")
                result = {}
            code, body = 200, {"task": adapter.task_code, "request_id": request_id, "result": result}
        except calls.AllCandidatesFailed as failure:
            failed = gateway._provider_failure(failure.last)
            status, error_code = UsageLog.Status.ERROR, failed.body["error"]["code"]
            code, body = failed.status, failed.body
        except asyncio.CancelledError:
            outcome = run.spend.outcome(UsageLog.Status.CANCELLED, "client_disconnected")
            outcome.api_calls += run.external_calls
            await gateway._finish(prepared, context, outcome, shielded=True)
            raise
        outcome = run.spend.outcome(status, error_code)
        outcome.api_calls += run.external_calls
        remaining = await gateway._finish(prepared, context, outcome)
        usage = {"tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out, "api_calls": outcome.api_calls,
                 "llm_steps": run.steps_used, "external_calls": run.external_calls,
                 "cost_micro_usd": outcome.cost_micro_usd}
        if code == 200:
            body.update({"notes": run.notes, "usage": usage})
        headers = gateway._headers(prepared, remaining)
        return code, {**body, "_headers": headers}

    if not stream:
        code, body = await execute()
        headers = body.pop("_headers")
        return gateway.GatewayResponse(code, body, headers)

    async def events_stream() -> AsyncIterator[bytes]:
        job = asyncio.create_task(execute())
        job.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (item := await events.get()) is not None:
                yield _event(item[0], item[1])
            code, body = job.result()
            body.pop("_headers", None)
            yield _event("result" if code == 200 else "error", {"status": code, **body})
        finally:
            if not job.done():  # the client went away: cancelling the run settles what it consumed
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job

    return events_stream(), gateway._headers(prepared, None)
