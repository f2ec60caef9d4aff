"""Prometheus exposition at /metrics (multiprocess mode: values merge across worker processes)."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db(transaction=True)


def scrape() -> dict[tuple, float]:
    text = Client().get("/metrics").content.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_cost_refusals_and_breakers(tenant_admin):
    before = scrape()
    body = {"model": "PRO_M", "messages": [{"role": "user", "content": "a hinge"}], "max_tokens": 20}
    ok = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", body, format="json").json()
    refused = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", {**body, "model": "ADVANCED"},
                                       format="json")
    assert refused.status_code == 403
    after = scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_requests_total", task="LLM2_DRAFT", status="SUCCESS", code="") == 1
    assert delta("gateway_requests_total", task="LLM2_DRAFT", status="REFUSED", code="model_class_not_allowed") == 1
    assert delta("gateway_tokens_total", task="LLM2_DRAFT", provider="offline", direction="out") == \
        ok["usage"]["completion_tokens"]
    assert delta("gateway_cost_micro_usd_total", task="LLM2_DRAFT", provider="offline") > 0
    assert delta("gateway_overhead_seconds_count", task="LLM2_DRAFT") == 1
    assert delta("gateway_provider_latency_seconds_count", provider="offline", model="offline-pro-m",
                 outcome="ok") == 1
    assert value(after, "gateway_circuit_breaker_state", provider="offline", model="offline-pro-m") == 0
    assert value(after, "gateway_in_flight_calls", task="LLM2_DRAFT") == value(before, "gateway_in_flight_calls",
                                                                                 task="LLM2_DRAFT")
