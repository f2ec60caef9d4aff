"""What a task adapter is, and the run context it gets from the pipeline.

An adapter declares its task, the model classes it supports and the policy keys it enforces,
parses its input, and runs its pipeline through an `AdapterRun`: every LLM step and every
outbound API call goes through the run, which counts them against the request's limits
(`max_steps`/`agent_max_steps`, `max_api_calls`) and records what they consumed, so the one
reservation of the request is settled with the true totals.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from catalog.selectors import ModelInfo
from llm import calls
from llm.providers.base import Provider

T = TypeVar("T")


class BudgetExhausted(Exception):
    """A per-request limit stops the pipeline; the adapter returns what it has, with a note."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(f"{key} limit of {limit} reached")
        self.key = key
        self.limit = limit


@dataclass
class AdapterRun:
    task_code: str
    request_id: str
    candidates: list[tuple[ModelInfo, Provider]]
    limits: dict[str, int]
    max_tokens_out: int
    steps_key: str | None  # the policy key bounding LLM steps, if any
    emit: Callable[[dict[str, Any]], None]
    # The call's own: every attempt lands in the settlement (MeteredCall renews the lease meanwhile).
    spend: calls.Spend = field(default_factory=calls.Spend)
    steps_used: int = 0
    external_calls: int = 0
    external_fees_micro_usd: int = 0  # the priced outbound requests (search fees), added to the cost
    notes: list[str] = field(default_factory=list)

    @property
    def max_steps(self) -> int | None:
        return self.limits.get(self.steps_key) if self.steps_key else None

    @property
    def max_api_calls(self) -> int | None:
        return self.limits.get("max_api_calls")

    @property
    def api_calls_used(self) -> int:
        return len(self.spend.attempts) + self.external_calls

    def steps_left(self) -> int | None:
        return None if self.max_steps is None else max(0, self.max_steps - self.steps_used)

    def api_calls_left(self) -> int | None:
        return None if self.max_api_calls is None else max(0, self.max_api_calls - self.api_calls_used)

    async def llm(self, messages: list[dict[str, Any]], *, step: str, max_tokens: int | None = None,
                  temperature: float | None = None) -> str:
        """One LLM step (with the router's fallback). Raises BudgetExhausted before exceeding a limit."""
        if self.max_steps is not None and self.steps_used >= self.max_steps:
            raise BudgetExhausted(self.steps_key or "max_steps", self.max_steps)
        if self.max_api_calls is not None and self.api_calls_used >= self.max_api_calls:
            raise BudgetExhausted("max_api_calls", self.max_api_calls)
        self.steps_used += 1
        self.emit({"event": "step", "step": step, "n": self.steps_used})
        cap = min(max_tokens or self.max_tokens_out, self.max_tokens_out)  # max_tokens_out bounds each step
        result = await calls.chat_with_fallback(self.candidates, messages, cap, temperature, self.spend,
                                                self.task_code)
        return result.text

    async def external(self, name: str, call: Callable[[], Awaitable[T]], *, fee_micro_usd: int = 0) -> T:
        """One outbound API request (e.g. a search). Counted -- and its fee charged -- when it is sent,
        whatever its outcome."""
        if self.max_api_calls is not None and self.api_calls_used >= self.max_api_calls:
            raise BudgetExhausted("max_api_calls", self.max_api_calls)
        self.external_calls += 1
        self.external_fees_micro_usd += fee_micro_usd
        self.emit({"event": "api_call", "name": name, "n": self.api_calls_used})
        return await call()


class TaskAdapter(abc.ABC):
    task_code: ClassVar[str]
    model_classes: ClassVar[tuple[str, ...]]
    policy_keys: ClassVar[tuple[str, ...]]
    steps_key: ClassVar[str | None] = None  # e.g. "agent_max_steps"; None = a fixed number of LLM steps
    fixed_steps: ClassVar[int] = 1  # worst-case LLM steps when steps_key is None

    @abc.abstractmethod
    def parse(self, payload: Any) -> Any:
        """Validate the request body; raise gateway_project.errors.BadRequest with a clear message."""

    @abc.abstractmethod
    def input_text(self, parsed: Any) -> str:
        """The text the LLM steps will read (counted against max_tokens_in before anything runs)."""

    def api_call_fee_micro_usd(self, parsed: Any) -> int:
        """The dearest price of one outbound request this run may send (the cost hold's worst case per
        API call). Synchronous: it may read the catalog. 0 for adapters that send none."""
        return 0

    def check_limits(self, parsed: Any, limits: dict[str, int]) -> None:  # noqa: B027 - optional hook
        """Refuse inputs a per-request limit forbids outright (e.g. too many diagram files)."""

    @abc.abstractmethod
    async def run(self, run: AdapterRun, parsed: Any) -> dict[str, Any]:
        """The pipeline. Returns the task's result; a BudgetExhausted it lets through becomes a note."""


async def gather_limited(calls_: list[Callable[[], Awaitable[T]]], limit: int = 4) -> list[T | BaseException]:
    """Run awaitables with bounded concurrency, returning results or exceptions in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[T]]) -> T | BaseException:
        async with semaphore:
            try:
                return await factory()
            except BudgetExhausted:
                raise
            except Exception as error:  # returned, not raised: the adapter decides what a failure means
                return error

    return await asyncio.gather(*(one(c) for c in calls_))
