"""Prometheus metrics, correct with several worker processes (prometheus_client's multiprocess
mode: every process writes its own files under PROMETHEUS_MULTIPROC_DIR; /metrics merges them).
Circuit-breaker state is read from the shared cache at scrape time, so it is one truth for all."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from catalog.selectors import ModelInfo

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("gateway_requests_total", "Metered requests by task, outcome and refusal code.",
                   ["task", "status", "code"])
OVERHEAD = Histogram("gateway_overhead_seconds", "Gateway time of a call, provider time excluded.", ["task"],
                     buckets=_LATENCY_BUCKETS)
PROVIDER_LATENCY = Histogram("gateway_provider_latency_seconds", "Provider attempt latency.",
                             ["provider", "model", "outcome"], buckets=_LATENCY_BUCKETS)
TOKENS = Counter("gateway_tokens_total", "Tokens metered, by task, provider and direction.",
                 ["task", "provider", "direction"])
COST = Counter("gateway_cost_micro_usd_total", "Cost metered in micro-USD, by task and provider.",
               ["task", "provider"])
IN_FLIGHT = Gauge("gateway_in_flight_calls", "Calls admitted and not yet settled.", ["task"],
                  multiprocess_mode="livesum")
# Named as the rollout runbook (issue 15) asks for it: calls SHADOW/SOFT let through that HARD would
# have refused, once per call and code (a call over two limits of one kind counts once for that code).
WOULD_REFUSE = Counter("would_refuse", "Calls SHADOW/SOFT let through that HARD would have refused, by refusal code "
                       "and task.", ["code", "task"])
FALLBACKS = Counter("gateway_fallbacks_total", "Fallbacks away from a failing provider model.",
                    ["task", "provider", "model"])


def provider_observed(model: ModelInfo, seconds: float, outcome: str) -> None:
    PROVIDER_LATENCY.labels(model.provider, model.model_name, outcome).observe(seconds)


def fallback(task: str, model: ModelInfo) -> None:
    FALLBACKS.labels(task, model.provider, model.model_name).inc()


def would_refuse(*, task: str, reasons: list[dict]) -> None:
    for code in dict.fromkeys(reason["code"] for reason in reasons):
        WOULD_REFUSE.labels(code, task).inc()


def call_finished(*, task: str, status: str, code: str, provider: str, tokens_in: int, tokens_out: int,
                  cost_micro_usd: int, overhead_seconds: float | None) -> None:
    REQUESTS.labels(task, status, code).inc()
    if provider:
        TOKENS.labels(task, provider, "in").inc(tokens_in)
        TOKENS.labels(task, provider, "out").inc(tokens_out)
        COST.labels(task, provider).inc(cost_micro_usd)
    if overhead_seconds is not None:
        OVERHEAD.labels(task).observe(max(0.0, overhead_seconds))


class _BreakerCollector:
    def collect(self):
        from catalog.selectors import provider_models_active
        from llm import router

        family = GaugeMetricFamily("gateway_circuit_breaker_state",
                                   "Circuit breaker per provider model: 0 closed, 1 half-open, 2 open.",
                                   labels=["provider", "model"])
        for model in provider_models_active():
            state = router.breaker_state(model).state
            family.add_metric([model.provider, model.model_name], {"closed": 0, "half_open": 1, "open": 2}[state])
        yield family


def exposition() -> bytes:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(_BreakerCollector())
    return generate_latest(registry)
