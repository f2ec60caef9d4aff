"""Running one admitted call on providers: fallback across candidates, breakers, timeouts, and
the spend of every attempt (a failed attempt's consumed tokens are charged too).

A failed attempt's provider text (`ProviderError.detail`, scrubbed of credentials) goes to the
server log and to the ledger row's `attempts`; what a tenant is shown is `ProviderError.message`.
A provider that refused the platform's credentials is skipped like a retryable failure, its
model's breaker opens at once and super admins are alerted (llm.provider_alerts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from catalog.selectors import ModelInfo
from llm import metrics, provider_alerts, router
from llm.providers.base import (
    NO_OPTIONS,
    ChatRequest,
    ChatResult,
    GenerationOptions,
    Provider,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
    StreamDelta,
    Usage,
)
from llm.tokenizer import text_tokens
from metering.models import UsageLog
from metering.services import CallOutcome

logger = logging.getLogger("gateway.providers")


@dataclass
class Attempt:
    model: ModelInfo
    tokens_in: int = 0  # all prompt tokens, cached ones included
    tokens_out: int = 0
    latency_ms: int = 0
    error: str = ""
    estimated: bool = False
    detail: str = ""  # the provider's own text, scrubbed: for the log and the ledger, never the tenant
    tokens_cached_in: int = 0  # of tokens_in: read from the provider's prompt cache
    tokens_cache_write: int = 0  # of tokens_in: written to it

    def cost(self) -> int:
        return self.model.cost_micro_usd(tokens_in=self.tokens_in, tokens_out=self.tokens_out,
                                         tokens_cached_in=self.tokens_cached_in,
                                         tokens_cache_write=self.tokens_cache_write)

    def reported(self, usage: Usage) -> None:
        """Take the provider's reported usage (its counts, cache splits included) as this attempt's."""
        self.tokens_in, self.tokens_out, self.estimated = usage.tokens_in, usage.tokens_out, usage.estimated
        self.tokens_cached_in, self.tokens_cache_write = usage.cached_in, usage.cache_write


@dataclass
class Spend:
    """Everything the call consumed, across attempts; the last attempt is the one that served."""

    attempts: list[Attempt] = field(default_factory=list)

    def outcome(self, status: str, error_code: str = "") -> CallOutcome:
        served = self.attempts[-1] if self.attempts else None
        failed = self.attempts[:-1] if status == UsageLog.Status.SUCCESS else self.attempts
        return CallOutcome(
            status=status,
            provider=served.model.provider if served else "",
            model_name=served.model.model_name if served else "",
            model_class=served.model.model_class if served else "",
            tokens_in=sum(a.tokens_in for a in self.attempts),
            tokens_out=sum(a.tokens_out for a in self.attempts),
            tokens_cached_in=sum(a.tokens_cached_in for a in self.attempts),
            tokens_cache_write=sum(a.tokens_cache_write for a in self.attempts),
            cost_micro_usd=sum(a.cost() for a in self.attempts),
            api_calls=len(self.attempts),
            latency_ms=sum(a.latency_ms for a in self.attempts),
            error_code=error_code,
            usage_estimated=any(a.estimated for a in self.attempts),
            attempts=[{"provider": a.model.provider, "model": a.model.model_name, "error": a.error,
                       "detail": a.detail, "tokens_in": a.tokens_in, "tokens_out": a.tokens_out,
                       "latency_ms": a.latency_ms}
                      for a in failed if a.error],
        )


class AllCandidatesFailed(Exception):
    # str() is the last error's *message* (ours), never the provider's text: a pipeline that
    # formats the failure into its answer shows the tenant nothing of the provider's.
    def __init__(self, last: ProviderError | None) -> None:
        super().__init__(last.message if last else "No configured and healthy provider is available.")
        self.last = last


def _failed(attempt: Attempt, model: ModelInfo, error: ProviderError, elapsed: float) -> None:
    """Record a failed attempt: the ledger's view of it, the log line, and what the failure means for
    the model (a refused key opens its breaker at once and alerts super admins)."""
    error.provider = error.provider or model.provider
    attempt.latency_ms = int(elapsed * 1000)
    attempt.error, attempt.detail = error.kind, error.detail
    metrics.provider_observed(model, elapsed, error.kind)
    if isinstance(error, ProviderAuthError):
        router.open_now(model)
        if not provider_alerts.provider_auth_failed(model, error):  # alerted within the cool-down already
            logger.warning("provider %s model %s still refuses the platform's credentials (%s): %s",
                           model.provider, model.model_name, error.kind, error.detail)
    elif error.retryable:
        router.record_failure(model)
        logger.warning("provider %s model %s failed (%s): %s", model.provider, model.model_name, error.kind,
                       error.detail)
    else:
        logger.info("provider %s model %s refused the request (%s): %s", model.provider, model.model_name,
                    error.kind, error.detail)


def _request(model: ModelInfo, messages: list[dict[str, Any]], max_tokens: int, temperature: float | None,
             options: GenerationOptions = NO_OPTIONS) -> ChatRequest:
    return ChatRequest(model=model.model_name, messages=messages, max_tokens=max_tokens, temperature=temperature,
                       options=options)


def _usable(candidates: list[tuple[ModelInfo, Provider]]) -> Iterator[tuple[ModelInfo, Provider]]:
    """Candidates whose breaker lets a call through, checked lazily: a half-open probe is only
    claimed for a model the call is really about to try."""
    snap = router.snapshot([m for m, _ in candidates])
    for model, provider in candidates:
        if router.breaker_allows(model, snap):
            yield model, provider


async def _pause_before_next(attempt_index: int, deadline: float) -> bool:
    pause = router.backoff_seconds(attempt_index)
    if time.monotonic() + pause >= deadline:
        return False
    await asyncio.sleep(pause)
    return True


async def chat_with_fallback(
    candidates: list[tuple[ModelInfo, Provider]], messages: list[dict[str, Any]], max_tokens: int,
    temperature: float | None, spend: Spend, task_code: str, options: GenerationOptions = NO_OPTIONS,
) -> ChatResult:
    deadline = time.monotonic() + settings.ROUTER_DEADLINE_SECONDS
    last: ProviderError | None = None
    for index, (model, provider) in enumerate(_usable(candidates)):
        if index and not await _pause_before_next(index - 1, deadline):
            break
        attempt = Attempt(model=model)
        spend.attempts.append(attempt)
        started = time.monotonic()
        timeout = min(settings.ROUTER_ATTEMPT_TIMEOUT_SECONDS, max(0.001, deadline - started))
        try:
            try:
                # A timeout scope, not wait_for: no extra task per call (and per stream chunk below).
                async with asyncio.timeout(timeout):
                    result = await provider.chat(_request(model, messages, max_tokens, temperature, options))
            except TimeoutError:
                raise ProviderTimeout(f"no answer within the attempt timeout ({timeout:.0f} s)",
                                      provider=model.provider) from None
        except ProviderError as error:
            attempt.tokens_in, attempt.tokens_out = error.tokens_in, error.tokens_out
            _failed(attempt, model, error, time.monotonic() - started)
            last = error
            if not error.retryable:
                raise AllCandidatesFailed(error) from None
            metrics.fallback(task_code, model)
            continue
        elapsed = time.monotonic() - started
        attempt.latency_ms = int(elapsed * 1000)
        attempt.reported(result.usage)
        router.record_success(model, elapsed)
        metrics.provider_observed(model, elapsed, "ok")
        return result
    raise AllCandidatesFailed(last)


_PIECE = re.compile(r"\w+|[^\w\s]")


def _pieces(text: str) -> int:
    """Words and marks: close to a BPE count for prose. Used, with slack, only to cut off a
    provider that ignores max_tokens; a well-behaved stream is never truncated by it."""
    return len(_PIECE.findall(text))


@dataclass
class StreamState:
    text: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    started_client: bool = False  # once a byte reached the client, no retry


async def stream_with_fallback(
    candidates: list[tuple[ModelInfo, Provider]], messages: list[dict[str, Any]], max_tokens: int,
    temperature: float | None, spend: Spend, state: StreamState, task_code: str,
    options: GenerationOptions = NO_OPTIONS,
) -> AsyncIterator[str | StreamDelta]:
    """Yield text pieces (str) and, when the model calls tools, StreamDelta objects carrying the
    tool-call pieces (their arguments count as output). Falls back only while nothing has been sent;
    enforces max_tokens itself
    too (a provider that ignores it is cut off), and meters from the provider's stream usage or,
    when it reports none, from the streamed text (flagged as estimated)."""
    deadline = time.monotonic() + settings.ROUTER_DEADLINE_SECONDS
    last: ProviderError | None = None
    for index, (model, provider) in enumerate(_usable(candidates)):
        if index and not await _pause_before_next(index - 1, deadline):
            break
        attempt = Attempt(model=model, tokens_in=provider.count_tokens(messages, model.model_name))
        spend.attempts.append(attempt)
        started = time.monotonic()
        usage: Usage | None = None
        produced: list[str] = []
        try:
            upstream = provider.stream(_request(model, messages, max_tokens, temperature, options))
            async with contextlib.aclosing(upstream) as deltas:
                async for delta in _with_deadline(deltas, deadline):
                    if delta.usage is not None:
                        usage = delta.usage
                    if delta.finish_reason:
                        state.finish_reason = delta.finish_reason
                    if delta.tool_calls:
                        produced.append("".join(d.arguments for d in delta.tool_calls))
                        state.started_client = True
                        attempt.tokens_out = text_tokens("".join(produced))
                        attempt.estimated = True
                        yield StreamDelta(tool_calls=delta.tool_calls)
                    if delta.text:
                        if _pieces("".join(produced) + delta.text) > max_tokens + max_tokens // 10 + 4:
                            state.finish_reason = "length"
                            break
                        produced.append(delta.text)
                        state.text.append(delta.text)
                        state.started_client = True
                        attempt.tokens_out = text_tokens("".join(produced))
                        attempt.estimated = True
                        yield delta.text
        except ProviderError as error:
            attempt.tokens_in = error.tokens_in or attempt.tokens_in
            # The provider's own count of a cut stream (its partial usage) beats our estimate.
            attempt.tokens_out = error.tokens_out or attempt.tokens_out
            _failed(attempt, model, error, time.monotonic() - started)
            last = error
            if state.started_client or not error.retryable:
                raise AllCandidatesFailed(error) from None
            metrics.fallback(task_code, model)
            continue
        finally:
            if usage is None and attempt.tokens_out == 0 and produced:
                attempt.tokens_out = text_tokens("".join(produced))
        elapsed = time.monotonic() - started
        attempt.latency_ms = int(elapsed * 1000)
        if usage is not None:
            attempt.reported(usage)
        router.record_success(model, elapsed)
        metrics.provider_observed(model, elapsed, "ok")
        return
    raise AllCandidatesFailed(last)


async def _with_deadline(deltas: AsyncIterator[StreamDelta], deadline: float) -> AsyncIterator[StreamDelta]:
    iterator = deltas.__aiter__()
    while True:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.001, min(remaining, settings.ROUTER_ATTEMPT_TIMEOUT_SECONDS))):
                delta = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ProviderTimeout("the provider stopped sending within the attempt timeout") from None
        yield delta
