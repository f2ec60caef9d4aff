"""The full pipeline for a task adapter, through the same `MeteredCall` as chat: identity -> policy
-> admission (one reservation for the whole run) -> adapter steps -> settlement, as JSON or as
server-sent progress events. `Idempotency-Key` has the /v1 contract: a retry replays the first
result and is charged once; a different body under the same key is a 409."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from gateway_project.errors import BadRequest, GatewayError
from llm import calls, gateway, openai_wire
from llm.adapters.base import AdapterRun, BudgetExhausted, TaskAdapter
from llm.db import db_step
from llm.metered import MeteredCall, SettledOnClose, provider_failure
from llm.tokenizer import text_tokens
from metering.models import UsageLog
from tenants.selectors import TenantContext


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def _chat_input(adapter: TaskAdapter, parsed: Any, payload: Any, stream: bool, fee: int) -> openai_wire.ChatInput:
    model = payload.get("model", "auto") if isinstance(payload, dict) else "auto"
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string.", code="invalid_model")
    max_tokens = payload.get("max_tokens") if isinstance(payload, dict) else None
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer.", code="invalid_max_tokens")
    return openai_wire.ChatInput(
        model=model or "auto", messages=[{"role": "user", "content": adapter.input_text(parsed)}],
        max_tokens=max_tokens, temperature=None, stream=stream, steps=adapter.steps_key or adapter.fixed_steps,
        api_calls="max_api_calls", restrict_classes=adapter.model_classes, api_call_fee_micro_usd=fee,
    )


async def run_task(*, context: TenantContext, adapter: TaskAdapter, payload: Any, stream: bool,
                   idempotency_key: str | None = None
                   ) -> gateway.GatewayResponse | tuple[AsyncIterator[bytes], dict[str, str]]:
    # Everything about the request is checked before admission: nothing admitted fails for its shape.
    openai_wire.check_json_values(payload)
    parsed = adapter.parse(payload)
    fee = await db_step(adapter.api_call_fee_micro_usd)(parsed)
    chat = _chat_input(adapter, parsed, payload, stream, fee)
    if stream and idempotency_key is not None:
        raise BadRequest("Idempotency-Key is not supported with ?stream=1.", code="invalid_idempotency_key")
    call = MeteredCall(context=context, task_code=adapter.task_code, chat=chat,
                       tokens_in=text_tokens(adapter.input_text(parsed)), idempotency_key=idempotency_key,
                       fingerprint=openai_wire.fingerprint(adapter.task_code, payload))
    if (refused := await call.admit()) is not None:
        return refused
    decision = call.decision
    limits = {k: int(v.value) for k, v in decision.limits.items() if isinstance(v.value, int) and ":" not in k}
    events: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
    run = AdapterRun(task_code=adapter.task_code, request_id=call.request_id, candidates=call.candidates,
                     limits=limits, max_tokens_out=decision.max_tokens_out, steps_key=adapter.steps_key,
                     emit=lambda e: events.put_nowait(("progress", e)), spend=call.spend)

    async def execute() -> tuple[int, dict[str, Any]]:
        async with call.running():
            try:
                adapter.check_limits(parsed, limits)
            except GatewayError as refusal:
                # Nothing ran: the reservation is settled with no usage and the refusal's code.
                call.fail(UsageLog.Status.ERROR, refusal.code)
                return refusal.status_code, refusal.payload()
            try:
                try:
                    result = await adapter.run(run, parsed)
                except BudgetExhausted as stop:
                    run.notes.append(f"Stopped at {stop.key} = {stop.limit}; returning what was produced so far.")
                    result = {}
            except calls.AllCandidatesFailed as failure:
                failed = provider_failure(failure.last)
                call.external_calls = run.external_calls
                call.external_fees_micro_usd = run.external_fees_micro_usd
                call.fail(UsageLog.Status.ERROR, failed.body["error"]["code"])
                return failed.status, failed.body
            finally:
                call.external_calls = run.external_calls
                call.external_fees_micro_usd = run.external_fees_micro_usd
            outcome = call.current_outcome(UsageLog.Status.SUCCESS)
            body = {"task": adapter.task_code, "request_id": call.request_id, "result": result, "notes": run.notes,
                    "usage": {"tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out,
                              "api_calls": outcome.api_calls, "llm_steps": run.steps_used,
                              "external_calls": run.external_calls,
                              "search_fees_micro_usd": run.external_fees_micro_usd,
                              "cost_micro_usd": outcome.cost_micro_usd}}
            call.succeed(response_status=200, response_body=body)
            return 200, body

    if not stream:
        code, body = await execute()
        return gateway.GatewayResponse(code, body, call.headers())

    async def events_stream() -> AsyncIterator[bytes]:
        job = asyncio.create_task(execute())
        job.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (item := await events.get()) is not None:
                yield _event(item[0], item[1])
            code, body = job.result()
            yield _event("result" if code == 200 else "error", {"status": code, **body})
        finally:
            if not job.done():  # the client went away: cancelling the run settles what it consumed
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job

    return SettledOnClose(call, events_stream()), call.headers()
