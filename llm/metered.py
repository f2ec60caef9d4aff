"""`MeteredCall`: the one lifecycle every metered path goes through — chat, streams and the three
task pipelines (DESIGN.md §3, §5).

    call = MeteredCall(context=..., task_code=..., chat=..., tokens_in=..., ...)
    refused = await call.admit()          # a refusal or an idempotent replay, as a response
    if refused: return refused
    async with call.running():            # renews the lease while the work runs
        ... call.spend collects the attempts; call.succeed() / call.fail(...) say how it ended
    # leaving the block settles: on success, on error, on cancellation (a client that went away)

Settlement happens exactly once per call (the service is idempotent too); a call whose code raised
or was cancelled is settled with what it consumed so far. No call site has to remember to.

The request must be validated whole before `admit` (llm/openai_wire.py): after admission, only the
provider and the work itself can fail, and those failures settle here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError
from django.utils import timezone

from catalog.selectors import ModelInfo
from gateway_project.errors import (
    DATABASE_DOWN_ERRORS,
    Conflict,
    DatabaseUnavailable,
    GatewayError,
    MeteringUnavailable,
    ServiceUnavailable,
)
from llm import calls, metrics, router
from llm.db import db_step
from llm.openai_wire import ChatInput
from llm.providers import capabilities
from llm.providers.base import Provider, ProviderError
from llm.providers.registry import servable
from metering import services as metering
from metering.models import UsageLog, UsageReservation
from metering.policy import EnforcementDecision, policy_evaluate
from tenants.selectors import TenantContext

logger = logging.getLogger("gateway.llm")

# Inside a step: the database's own errors; around one (the lease renewer): what db_step raises for them.
_ACCESS_ERRORS = (DatabaseError, InterfaceError, *DATABASE_DOWN_ERRORS, DatabaseUnavailable)


@dataclass
class CallResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


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
    request_id: str


class _InFlight:
    """Another request holds this Idempotency-Key and is still running: wait (off-thread) and ask again."""


def _refuse(context: TenantContext, decision: EnforcementDecision, request_id: str, mode: str, now: datetime) -> None:
    if decision.task is not None:
        metering.usage_log_refusal(
            request_id=request_id, tenant_id=context.tenant_id, user_id=context.user_id, task_id=decision.task.id,
            feature_code=decision.task.feature_code, code=decision.code, mode=mode, now=now,
            api_key_id=context.api_key_id,
        )
    raise GatewayError(decision.message, code=decision.code, status_code=decision.status,
                       retry_after=decision.retry_after)


def _replay_lookup(context: TenantContext, key: str, print_: str) -> _Replay | _InFlight | None:
    """The stored response of an earlier call with this key, _InFlight while it runs, None if free."""
    existing = metering.idempotency_lookup(tenant_id=context.tenant_id, key=key, fingerprint=print_)
    if existing is None:
        return None  # never used, or its call failed and freed the key: run the call
    if existing.status == UsageReservation.Status.COMPLETED and existing.response_body is not None:
        return _Replay(status=existing.response_status or 200, body=existing.response_body,
                       request_id=existing.request_id)
    if existing.status == UsageReservation.Status.ACTIVE:
        return _InFlight()
    return None


def _decision(context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int, now: datetime, mode: str,
              usage_unavailable: bool = False) -> EnforcementDecision:
    decision = policy_evaluate(
        context=context, task_code=task_code, requested_model=chat.model, tokens_in=tokens_in,
        requested_max_tokens_out=chat.max_tokens, now=now, mode=mode, steps=chat.steps, api_calls=chat.api_calls,
        restrict_classes=chat.restrict_classes, usage_unavailable=usage_unavailable,
        api_call_fee_micro_usd=chat.api_call_fee_micro_usd,
    )
    if decision.allowed:  # before any hold: a request no candidate can serve is a 400, never charged
        capabilities.narrow(decision, chat.messages, chat.options)
    return decision


def _admit(context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int, request_id: str,
           idempotency_key: str | None, print_: str) -> _Admitted | _Replay | _InFlight:
    """Policy, then every hold in one transaction (one database step, off the event loop)."""
    mode = enforcement_mode(context)
    now = timezone.now()
    try:
        if idempotency_key:
            replay = _replay_lookup(context, idempotency_key, print_)
            if replay is not None:
                return replay
        decision = _decision(context, task_code, chat, tokens_in, now, mode)
        if not decision.allowed:
            _refuse(context, decision, request_id, mode, now)
        try:
            admission = metering.usage_admit(
                tenant_id=context.tenant_id, user_id=context.user_id, decision=decision, request_id=request_id,
                mode=mode, now=now, idempotency_key=idempotency_key, fingerprint=print_,
                api_key_id=context.api_key_id,
            )
        except metering.IdempotencyInFlight:
            return _InFlight()  # another request took the key first: wait for its answer
        except GatewayError as refusal:
            metering.usage_log_refusal(
                request_id=request_id, tenant_id=context.tenant_id, user_id=context.user_id,
                task_id=decision.task.id, feature_code=decision.task.feature_code, code=refusal.code, mode=mode,
                now=now, api_key_id=context.api_key_id,
            )
            raise
        if decision.would_refuse:
            # HARD refuses a per-request limit before it takes any hold: those reasons come first.
            admission.would_refuse = [*decision.would_refuse, *admission.would_refuse]
            admission.would_refuse_code = decision.would_refuse_code
        return _Admitted(decision=decision, admission=admission, mode=mode, now=now)
    except _ACCESS_ERRORS as exc:
        if mode == "HARD":
            # An outage gets one line per request; any other database error (a bug) its traceback.
            logger.warning("metering database unavailable; refusing (HARD mode): %s: %s", exc.__class__.__name__,
                           str(exc).partition("\n")[0], exc_info=not isinstance(exc, DATABASE_DOWN_ERRORS))
            raise MeteringUnavailable() from None
        # SHADOW/SOFT fail open: the call runs; its usage is spooled and recorded later.
        logger.error("metering database unavailable; failing open in %s mode", mode)
        return _Admitted(decision=_decision_without_db(context, task_code, chat, tokens_in, now, mode),
                         admission=None, mode=mode, now=now)


def _decision_without_db(context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int, now: datetime,
                         mode: str) -> EnforcementDecision:
    # Rules and catalog come from the shared cache; only the meters were unreachable.
    try:
        decision = _decision(context, task_code, chat, tokens_in, now, mode, usage_unavailable=True)
    except _ACCESS_ERRORS:
        raise MeteringUnavailable("Metering is unavailable and the policy cache is cold.") from None
    if not decision.allowed:
        raise GatewayError(decision.message, code=decision.code, status_code=decision.status)
    return decision


def _settle(admitted: _Admitted, context: TenantContext, request_id: str,
            outcome: metering.CallOutcome) -> int | None:
    """Settle (one database step). Returns the tokens left under the tightest token quota."""
    outcome.would_refuse_code = (admitted.admission.would_refuse_code if admitted.admission
                                 else admitted.decision.would_refuse_code)
    outcome.would_refuse = _would_refuse(admitted)
    try:
        if admitted.admission is not None:
            log = metering.usage_settle(reservation_id=admitted.admission.reservation_id, outcome=outcome)
            return log.quota_tokens_remaining if log is not None else None
    except metering.ReservationLost:
        # Whatever the mode: the call ran and must be charged; the spool replays it exactly once.
        logger.error("reservation of %s lost in a database crash; spooling its usage", request_id)
    except _ACCESS_ERRORS:
        logger.error("metering database unavailable at settlement; spooling usage of %s", request_id)
    from metering.spool import spool_write

    # HARD included: the call ran, so what it used is kept (and replayed exactly once), never dropped.
    spool_write(
        request_id=request_id, tenant_id=context.tenant_id, user_id=context.user_id, task_id=admitted.decision.task.id,
        feature_code=admitted.decision.task.feature_code, mode=admitted.mode, admitted_at=admitted.now,
        holds=admitted.decision.holds, outcome=outcome, would_refuse_code=outcome.would_refuse_code,
        api_key_id=context.api_key_id,
    )
    return None


def _would_refuse(admitted: _Admitted) -> list[dict[str, Any]]:
    """Every reason HARD would have refused this admitted call for (SHADOW/SOFT); [] in HARD."""
    return list(admitted.admission.would_refuse if admitted.admission else admitted.decision.would_refuse)


def candidates_for(decision: EnforcementDecision, context: TenantContext) -> list[tuple[ModelInfo, Provider]]:
    """The models this call may use that can be served now, in the router's order."""
    configured = servable(decision.candidates)
    strategy = router.strategy_for(plan_code=context.plan_code, task_code=decision.task.code)
    ordered = router.order_candidates([m for m, _ in configured], classes=decision.model_classes,
                                      strategy=strategy, tokens_in=decision.tokens_in,
                                      max_tokens_out=decision.max_tokens_out)
    providers = {id(m): p for m, p in configured}
    return [(m, providers[id(m)]) for m in ordered]


def provider_failure(error: ProviderError | None) -> CallResponse:
    """The response for a call every candidate failed: our code and message, never the provider's."""
    if error is None:
        return CallResponse(503, ServiceUnavailable(
            "No configured and healthy provider serves the allowed model classes.", code="no_provider_available"
        ).payload())
    # Our code and our words only: the provider's own text (error.detail) can carry the platform's
    # key or internal hosts, and went to the log and the ledger instead (llm/calls.py).
    return CallResponse(error.status_code if error.status_code in (400, 502, 503, 504) else 502, {"error": {
        "code": error.code, "message": error.message, "type": "provider_error"}})


# Settlements started for calls whose client left mid-admission: referenced until done (the event
# loop keeps only weak references to tasks).
_orphan_settlements: set[asyncio.Future] = set()


class MeteredCall:
    def __init__(self, *, context: TenantContext, task_code: str, chat: ChatInput, tokens_in: int,
                 idempotency_key: str | None = None, fingerprint: str = "") -> None:
        self.context = context
        self.task_code = task_code
        self.chat = chat
        self.tokens_in = tokens_in
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint
        self.request_id = "req_" + uuid.uuid4().hex
        self.started = time.monotonic()
        self.spend = calls.Spend()
        self.external_calls = 0  # outbound non-LLM requests (searches), each an API call
        self.external_fees_micro_usd = 0  # their prices (search fees), part of the call's cost
        self.admitted: _Admitted | None = None
        self.candidates: list[tuple[ModelInfo, Provider]] = []
        self.outcome: metering.CallOutcome | None = None
        self.remaining: int | None = None
        self._settled = False

    @property
    def decision(self) -> EnforcementDecision:
        assert self.admitted is not None
        return self.admitted.decision

    # --- admission -------------------------------------------------------------------------------

    async def admit(self) -> CallResponse | None:
        """Admit the call. Returns the response to send instead (a refusal, or the replay of an
        earlier call with the same Idempotency-Key), or None when admitted."""
        if self.idempotency_key is not None and not (0 < len(self.idempotency_key) <= 200):
            return self._error_response(GatewayError("Idempotency-Key must be 1 to 200 characters.",
                                                     code="invalid_idempotency_key", status_code=400))
        wait_until = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
        try:
            while isinstance(admitted := await self._admit_or_release(), _InFlight):
                # Waiting holds no thread and no connection: only a short lookup every 50 ms.
                if time.monotonic() > wait_until:
                    raise Conflict("A request with this Idempotency-Key is still running.",
                                   code="idempotency_in_progress")
                await asyncio.sleep(0.05)
        except GatewayError as refusal:
            metrics.call_finished(task=self.task_code, status="REFUSED", code=refusal.code, provider="",
                                  tokens_in=0, tokens_out=0, cost_micro_usd=0, overhead_seconds=None)
            return self._error_response(refusal)  # a refused call is in the ledger under this id
        if isinstance(admitted, _Replay):
            return CallResponse(admitted.status, admitted.body,
                                {"X-Request-ID": admitted.request_id, "Idempotent-Replayed": "true"})
        self.admitted = admitted
        metrics.would_refuse(task=self.task_code, reasons=_would_refuse(admitted))
        self.candidates = candidates_for(admitted.decision, self.context)
        metrics.IN_FLIGHT.labels(self.task_code).inc()
        return None

    def _error_response(self, error: GatewayError) -> CallResponse:
        return CallResponse(error.status_code, error.payload(), {**error.headers(), "X-Request-ID": self.request_id})

    async def _admit_or_release(self) -> _Admitted | _Replay | _InFlight:
        """`_admit` in a worker thread. A client that disconnects meanwhile cancels us, but not the
        thread: its admission still commits, so it is settled as cancelled as soon as it does (else
        its holds, a concurrency slot among them, would stay taken until the lease expired)."""
        admission = asyncio.ensure_future(db_step(_admit)(self.context, self.task_code, self.chat, self.tokens_in,
                                                          self.request_id, self.idempotency_key, self.fingerprint))
        try:
            return await asyncio.shield(admission)
        except asyncio.CancelledError:
            context, request_id = self.context, self.request_id

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

    # --- running ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MeteredCall]:
        """The work of an admitted call. Renews the lease while it runs; settles when it ends,
        however it ends."""
        renewer = asyncio.ensure_future(self._renew_while_running())
        try:
            yield self
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away: settle what was consumed, then let the cancellation through.
            self.fail(UsageLog.Status.CANCELLED, "client_disconnected")
            raise
        except BaseException:
            self.fail(UsageLog.Status.ERROR, "internal_error")
            raise
        finally:
            renewer.cancel()
            await self.settle()

    async def _renew_while_running(self) -> None:
        if self.admitted is None or self.admitted.admission is None:
            return
        reservation_id = self.admitted.admission.reservation_id
        # A third of the lease: two renewals can fail in a row (a database blip) before expiry may
        # release the call under it.
        every = max(0.05, settings.RESERVATION_LEASE_SECONDS / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await db_step(metering.reservation_renew)(reservation_id=reservation_id)
            except _ACCESS_ERRORS:
                logger.warning("could not renew the lease of %s; retrying", self.request_id)

    def succeed(self, *, response_status: int | None = None, response_body: Any = None) -> metering.CallOutcome:
        outcome = self.current_outcome(UsageLog.Status.SUCCESS, "")
        if self.idempotency_key is not None and response_body is not None:
            # Kept only for a retry with the same key to replay: a call without one leaves no copy
            # of the generated text in the database (and costs no JSON write).
            outcome.response_status, outcome.response_body = response_status, response_body
        self.outcome = outcome
        return outcome

    def fail(self, status: str, error_code: str) -> metering.CallOutcome:
        if self.outcome is None:  # the first ending is the one that counts
            self.outcome = self.current_outcome(status, error_code)
        return self.outcome

    def current_outcome(self, status: str, error_code: str = "") -> metering.CallOutcome:
        """What the call has consumed so far, as an outcome with this status."""
        outcome = self.spend.outcome(status, error_code)
        outcome.api_calls += self.external_calls
        outcome.cost_micro_usd += self.external_fees_micro_usd
        outcome.search_fees_micro_usd = self.external_fees_micro_usd
        if self.admitted is not None:
            outcome.max_tokens_fitted = getattr(self.admitted.decision, "max_tokens_fitted", None)
        return outcome

    async def settle(self) -> int | None:
        """Settle once (shielded: a cancellation of the caller does not cancel the settlement)."""
        if self._settled or self.admitted is None:
            return self.remaining
        self._settled = True
        outcome = self.outcome or self.fail(UsageLog.Status.ERROR, "internal_error")
        self.remaining = await asyncio.shield(db_step(_settle)(self.admitted, self.context, self.request_id, outcome))
        metrics.IN_FLIGHT.labels(self.task_code).dec()
        metrics.call_finished(
            task=self.task_code, status=outcome.status, code=outcome.error_code, provider=outcome.provider,
            tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out, cost_micro_usd=outcome.cost_micro_usd,
            overhead_seconds=time.monotonic() - self.started - outcome.latency_ms / 1000,
        )
        return self.remaining

    # --- the response ----------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        headers = {"X-Request-ID": self.request_id}
        if self.remaining is not None:
            headers["X-Quota-Tokens-Remaining"] = str(self.remaining)
        if self.admitted is None:
            return headers
        warnings = list(self.admitted.decision.warnings)
        admission = self.admitted.admission
        if self.admitted.mode == "SOFT" and admission and admission.would_refuse_code:
            warnings.append(f"{admission.would_refuse_code}: {admission.would_refuse_message}")
        if warnings:
            headers["X-Gateway-Warning"] = "; ".join(warnings)[:1000]
        return headers


class SettledOnClose:
    """The events of an admitted call. Closing it settles the call even if nobody ever iterated it
    (the client left before the first byte): a generator that never started would never run its
    `finally`, and the call's holds would wait for the lease to expire."""

    def __init__(self, call: MeteredCall, events: AsyncIterator[bytes]) -> None:
        self._call, self._events = call, events
        self._started = False

    def __aiter__(self) -> SettledOnClose:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        return await self._events.__anext__()

    async def aclose(self) -> None:
        if not self._started:
            self._started = True
            self._call.fail(UsageLog.Status.CANCELLED, "client_disconnected")
            await self._call.settle()
        await self._events.aclose()  # type: ignore[attr-defined]


__all__ = ["CallResponse", "MeteredCall", "SettledOnClose", "candidates_for", "enforcement_mode", "provider_failure"]
