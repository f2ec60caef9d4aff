"""Routing: candidate order by strategy, circuit breakers shared across processes, fallback.

Strategy (settings.ROUTER_STRATEGY, overridable per plan or task via ROUTER_STRATEGY_OVERRIDES):
- cost:         cheapest first, then faster (latency EWMA), then healthier
- performance:  faster first, then cheaper
- availability: healthier (closed breaker, fewer recent failures) first, then cheaper
Candidates stay grouped by model-class preference: `auto` tries the cheapest allowed class first.

Breaker per provider model, state in the shared cache (Redis in production) so every worker
process sees it: open after ROUTER_BREAKER_FAILURES consecutive failures (at once, `open_now`, when
the provider refused the platform's credentials: every further call would fail the same way); after
ROUTER_BREAKER_COOLDOWN_SECONDS one process at a time may send a half-open probe; a success
closes it.

Every call reads this state (to order candidates and to check breakers) and writes the latency
EWMA, so each process keeps a short memo (ROUTER_STATE_TTL_SECONDS, default 1 s) in front of the
shared cache: its own failures and successes update the memo at once, another process's are seen
within the TTL. Breaker counts and openings are written through to the shared cache immediately;
the advisory EWMA at most once a second per model.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from catalog.selectors import ModelInfo

EWMA_ALPHA = 0.3
EWMA_WRITE_EVERY_SECONDS = 1.0


def _k(kind: str, model: ModelInfo) -> str:
    return f"router:{kind}:{model.provider}:{model.model_name}"


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed | open | half_open
    failures: int


@dataclass(frozen=True)
class ModelHealth:
    failures: int
    opened_at: float | None
    ewma: float | None

    def breaker(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState("closed", self.failures)
        if now - self.opened_at >= settings.ROUTER_BREAKER_COOLDOWN_SECONDS:
            return BreakerState("half_open", self.failures)
        return BreakerState("open", self.failures)


Snapshot = dict[tuple[str, str], ModelHealth]

# (provider, model name) -> (monotonic time read from the shared cache, health); and when this
# process last wrote each model's EWMA to the shared cache.
_memo: dict[tuple[str, str], tuple[float, ModelHealth]] = {}
_ewma_written: dict[tuple[str, str], float] = {}
_lock = threading.Lock()


def _id(model: ModelInfo) -> tuple[str, str]:
    return (model.provider, model.model_name)


def clear_local() -> None:
    """Forget this process's memo (tests: the shared cache was cleared or edited under us)."""
    with _lock:
        _memo.clear()
        _ewma_written.clear()


def _remember(model: ModelInfo, health: ModelHealth, read_at: float | None = None) -> None:
    with _lock:
        if read_at is None:  # our own write: keep the time of the last shared read
            read_at = _memo[_id(model)][0] if _id(model) in _memo else time.monotonic()
        _memo[_id(model)] = (read_at, health)


def snapshot(models: Sequence[ModelInfo]) -> Snapshot:
    """Breaker and latency state of these models: from the memo, else in one cache round trip."""
    ttl = settings.ROUTER_STATE_TTL_SECONDS
    now = time.monotonic()
    result: Snapshot = {}
    stale: list[ModelInfo] = []
    for m in models:
        entry = _memo.get(_id(m))
        if entry is not None and now - entry[0] < ttl:
            result[_id(m)] = entry[1]
        else:
            stale.append(m)
    if not stale:
        return result
    shared = shared_snapshot(stale)
    for m in stale:
        result[_id(m)] = shared[_id(m)]
        _remember(m, shared[_id(m)], now)
    return result


def shared_snapshot(models: Sequence[ModelInfo]) -> Snapshot:
    """The state in the shared cache itself, past this process's memo, in one round trip: what every
    router process acts on within ROUTER_STATE_TTL_SECONDS (the console's provider health reads this)."""
    keys = [_k(kind, m) for m in models for kind in ("fail", "open", "ewma")]
    values = cache.get_many(keys)
    result: Snapshot = {}
    for m in models:
        opened = values.get(_k("open", m))
        ewma = values.get(_k("ewma", m))
        result[_id(m)] = ModelHealth(
            failures=int(values.get(_k("fail", m)) or 0),
            opened_at=float(opened) if opened is not None else None,
            ewma=float(ewma) if ewma is not None else None,
        )
    return result


def _health(model: ModelInfo, snap: Snapshot | None) -> ModelHealth:
    if snap is not None and _id(model) in snap:
        return snap[_id(model)]
    return snapshot([model])[_id(model)]


def breaker_state(model: ModelInfo, now: float | None = None, snap: Snapshot | None = None) -> BreakerState:
    return _health(model, snap).breaker(now or time.time())


def breaker_allows(model: ModelInfo, snap: Snapshot | None = None) -> bool:
    state = breaker_state(model, snap=snap)
    if state.state == "closed":
        return True
    if state.state == "open":
        return False
    # Half-open: exactly one probe across all processes per cool-down.
    # Cache backends count whole seconds (Redis would turn 0.3 s into "expire now").
    return cache.add(_k("probe", model), 1, max(1, math.ceil(settings.ROUTER_BREAKER_COOLDOWN_SECONDS)))


def record_success(model: ModelInfo, latency_s: float, snap: Snapshot | None = None) -> None:
    health = _health(model, snap)
    if health.failures or health.opened_at is not None:
        cache.delete_many([_k("fail", model), _k("open", model), _k("probe", model)])
    # The EWMA is advisory: racing writers may lose an update, which only nudges the estimate.
    value = latency_s if health.ewma is None else EWMA_ALPHA * latency_s + (1 - EWMA_ALPHA) * health.ewma
    _remember(model, ModelHealth(failures=0, opened_at=None, ewma=value))
    now = time.monotonic()
    if now - _ewma_written.get(_id(model), -math.inf) >= EWMA_WRITE_EVERY_SECONDS:
        _ewma_written[_id(model)] = now
        cache.set(_k("ewma", model), value, 3600)


def record_failure(model: ModelInfo) -> None:
    key = _k("fail", model)
    cache.add(key, 0, 3600)
    try:
        failures = cache.incr(key)
    except ValueError:
        cache.set(key, 1, 3600)
        failures = 1
    health = _health(model, None)
    opened_at = health.opened_at
    if failures >= settings.ROUTER_BREAKER_FAILURES:
        # (Re)open: a failed half-open probe starts a new cool-down.
        opened_at = time.time()
        cache.set(_k("open", model), opened_at, 3600)
        cache.delete(_k("probe", model))
    _remember(model, ModelHealth(failures=failures, opened_at=opened_at, ewma=health.ewma))


def open_now(model: ModelInfo) -> None:
    """Open the breaker at once, whatever the count: a failure that will repeat on every call (the
    provider refused our key) should not be sent ROUTER_BREAKER_FAILURES more times first."""
    health = _health(model, None)
    failures = max(settings.ROUTER_BREAKER_FAILURES, health.failures)
    opened_at = time.time()
    cache.set_many({_k("fail", model): failures, _k("open", model): opened_at}, 3600)
    cache.delete(_k("probe", model))
    _remember(model, ModelHealth(failures=failures, opened_at=opened_at, ewma=health.ewma))


def latency_ewma(model: ModelInfo, snap: Snapshot | None = None) -> float | None:
    return _health(model, snap).ewma


def strategy_for(*, plan_code: str, task_code: str) -> str:
    overrides = settings.ROUTER_STRATEGY_OVERRIDES
    return overrides.get(task_code) or overrides.get(plan_code) or settings.ROUTER_STRATEGY


def order_candidates(candidates: Sequence[ModelInfo], *, classes: Sequence[str], strategy: str,
                     tokens_in: int, max_tokens_out: int, snap: Snapshot | None = None) -> list[ModelInfo]:
    snap = snap if snap is not None else snapshot(candidates)
    now = time.time()

    def cost(m: ModelInfo) -> int:
        return m.cost_micro_usd(tokens_in=tokens_in, tokens_out=max_tokens_out)

    def speed(m: ModelInfo) -> float:
        latency = latency_ewma(m, snap)
        return latency if latency is not None else 0.0  # unknown: give it a chance

    def health(m: ModelInfo) -> tuple[int, int]:
        state = breaker_state(m, now, snap)
        return ({"closed": 0, "half_open": 1, "open": 2}[state.state], state.failures)

    def key(m: ModelInfo) -> tuple:
        preference = classes.index(m.model_class) if m.model_class in classes else len(classes)
        if strategy == "performance":
            return (preference, speed(m), cost(m), health(m), m.priority)
        if strategy == "availability":
            return (preference, health(m), cost(m), speed(m), m.priority)
        return (preference, cost(m), speed(m), health(m), m.priority)

    return sorted(candidates, key=key)


def backoff_seconds(attempt: int) -> float:
    """Jittered exponential backoff between fallback attempts ("full jitter")."""
    cap = min(settings.ROUTER_BACKOFF_MAX_SECONDS, settings.ROUTER_BACKOFF_BASE_SECONDS * (2 ** attempt))
    return random.uniform(0, cap)
