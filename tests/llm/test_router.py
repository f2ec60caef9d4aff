"""Router: strategy ordering, circuit breakers shared through the cache, traffic moving away from a
failing model and back once it recovers."""

from __future__ import annotations

import time

import pytest
from django.core.cache import cache

from catalog.selectors import provider_models_active
from llm import router
from metering.models import UsageLog

pytestmark = pytest.mark.django_db(transaction=True)


def model(name: str):
    return next(m for m in provider_models_active() if m.model_name == name)


@pytest.fixture
def quick_breaker(settings):
    settings.ROUTER_BREAKER_FAILURES = 3
    settings.ROUTER_BREAKER_COOLDOWN_SECONDS = 0.3
    settings.ROUTER_BACKOFF_BASE_SECONDS = 0.0


def test_breaker_opens_after_n_consecutive_failures_then_probes_once_and_closes(catalog, quick_breaker):
    m = model("offline-pro-m")
    for _ in range(2):
        router.record_failure(m)
    assert router.breaker_state(m).state == "closed" and router.breaker_allows(m)
    router.record_failure(m)
    assert router.breaker_state(m).state == "open"
    assert not router.breaker_allows(m)
    time.sleep(0.35)
    assert router.breaker_state(m).state == "half_open"
    assert router.breaker_allows(m)  # the one probe
    assert not router.breaker_allows(m)  # everyone else waits for its answer
    router.record_success(m, 0.01)
    assert router.breaker_state(m).state == "closed" and router.breaker_allows(m)


def test_a_failed_probe_reopens_the_breaker(catalog, quick_breaker):
    m = model("offline-pro-m")
    for _ in range(3):
        router.record_failure(m)
    time.sleep(0.35)
    assert router.breaker_allows(m)
    router.record_failure(m)
    assert router.breaker_state(m).state == "open"


def test_breaker_state_lives_in_the_shared_cache(catalog, quick_breaker):
    m = model("offline-pro-m")
    for _ in range(3):
        router.record_failure(m)
    # Another process sees exactly what is in the cache: emulate it by reading the raw keys.
    assert cache.get(f"router:open:{m.provider}:{m.model_name}") is not None
    assert int(cache.get(f"router:fail:{m.provider}:{m.model_name}")) == 3


def test_strategies_order_candidates(catalog):
    cheap, dear = model("offline-pro-m"), model("offline-pro-l")
    classes = ["PRO_M", "PRO_L"]
    assert router.order_candidates([dear, cheap], classes=classes, strategy="cost", tokens_in=100,
                                   max_tokens_out=100) == [cheap, dear]
    # Within one class, cost then latency decide; across classes, the preference order stays.
    gpt, grok = model("gpt-4o"), model("grok-3")
    router.record_success(gpt, 2.0)
    router.record_success(grok, 0.1)
    assert router.order_candidates([gpt, grok], classes=["PRO_M"], strategy="cost", tokens_in=100,
                                   max_tokens_out=100) == [gpt, grok]
    assert router.order_candidates([gpt, grok], classes=["PRO_M"], strategy="performance", tokens_in=100,
                                   max_tokens_out=100) == [grok, gpt]
    for _ in range(5):
        router.record_failure(grok)
    assert router.order_candidates([grok, gpt], classes=["PRO_M"], strategy="availability", tokens_in=100,
                                   max_tokens_out=100) == [gpt, grok]


def test_strategy_overrides_per_task_beat_per_plan(settings):
    settings.ROUTER_STRATEGY = "cost"
    settings.ROUTER_STRATEGY_OVERRIDES = {"PRO": "performance", "LLM2_DRAFT": "availability"}
    assert router.strategy_for(plan_code="PRO", task_code="LLM2_DRAFT") == "availability"
    assert router.strategy_for(plan_code="PRO", task_code="LLM1_PRIOR_ART") == "performance"
    assert router.strategy_for(plan_code="FREE", task_code="LLM1_PRIOR_ART") == "cost"


@pytest.fixture
def no_router_memo(settings):
    """The test edits the shared cache as another process would and expects the next call to see it."""
    settings.ROUTER_STATE_TTL_SECONDS = 0


def test_traffic_moves_off_an_open_breaker_and_back_after_recovery(tenant_admin, quick_breaker, no_router_memo):
    body = {"model": "auto", "messages": [{"role": "user", "content": "a hinge"}], "max_tokens": 20}
    failing = {"model": "auto", "messages": [{"role": "user", "content": "a hinge [offline:fail]"}],
               "max_tokens": 20}
    for _ in range(3):  # each call fails on both candidates: both breakers count
        tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", failing, format="json")
    assert router.breaker_state(model("offline-pro-m")).state == "open"
    # Let the cheaper model recover first: the dearer one stays open.
    cache.delete_many(["router:open:offline:offline-pro-l", "router:fail:offline:offline-pro-l"])
    r = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", body, format="json")
    assert r.status_code == 200 and r.json()["model"] == "offline-pro-l"  # traffic moved
    time.sleep(0.35)
    r = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", body, format="json")
    assert r.json()["model"] == "offline-pro-m"  # the half-open probe succeeded: back to the cheaper model
    assert router.breaker_state(model("offline-pro-m")).state == "closed"
    assert UsageLog.objects.filter(status="SUCCESS").count() == 2


def test_another_processes_breaker_is_seen_within_the_state_ttl(catalog, quick_breaker, settings):
    settings.ROUTER_STATE_TTL_SECONDS = 0.2
    m = model("offline-pro-m")
    assert router.breaker_allows(m)  # read once: closed, remembered
    # Another process opens the breaker: only the shared cache changes.
    cache.set(f"router:fail:{m.provider}:{m.model_name}", 3, 3600)
    cache.set(f"router:open:{m.provider}:{m.model_name}", time.time(), 3600)
    time.sleep(0.25)
    assert router.breaker_state(m).state == "open" and not router.breaker_allows(m)


def test_routing_state_costs_no_cache_read_within_the_ttl(catalog, settings, monkeypatch):
    settings.ROUTER_STATE_TTL_SECONDS = 60
    gpt, grok = model("gpt-4o"), model("grok-3")
    router.snapshot([gpt, grok])
    reads = []
    monkeypatch.setattr(cache, "get_many", lambda keys, *a, **k: reads.append(keys) or {})
    for _ in range(3):  # ordering and the breaker checks of three calls
        router.order_candidates([gpt, grok], classes=["PRO_M"], strategy="cost", tokens_in=10, max_tokens_out=10)
        assert router.breaker_allows(gpt) and router.breaker_allows(grok)
    assert reads == []


def test_latency_ewma_is_used_at_once_but_written_to_the_shared_cache_at_most_once_a_second(catalog, settings):
    settings.ROUTER_STATE_TTL_SECONDS = 60
    gpt, grok = model("gpt-4o"), model("grok-3")
    key = f"router:ewma:{gpt.provider}:{gpt.model_name}"
    router.record_success(gpt, 0.5)
    assert cache.get(key) == 0.5
    router.record_success(grok, 0.4)
    router.record_success(gpt, 0.1)
    router.record_success(gpt, 0.1)
    assert cache.get(key) == 0.5  # not yet written again
    local = router.latency_ewma(gpt)
    assert local < 0.4  # but this process routes on it already
    assert router.order_candidates([grok, gpt], classes=["PRO_M"], strategy="performance", tokens_in=10,
                                   max_tokens_out=10) == [gpt, grok]
    time.sleep(router.EWMA_WRITE_EVERY_SECONDS)
    router.record_success(gpt, 0.1)
    assert cache.get(key) == pytest.approx(router.latency_ewma(gpt))
