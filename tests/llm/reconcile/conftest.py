"""Fixtures: the OpenAI and Anthropic fakes that answer model calls AND their organisation usage/cost
reports (one loopback server per provider, as the real host is), configured as the gateway's providers."""

from __future__ import annotations

import pytest

from catalog.models import ProviderModel
from metering.services import policy_rule_set
from tests.fakes.anthropic_usage_fake import FakeAnthropicOrg
from tests.fakes.openai_usage_fake import FakeOpenAIOrg

TASK = "LLM1_PRIOR_ART"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "claude-haiku-4-5": "claude-haiku-4-5-20251001"}


def price_sheet(provider: str) -> dict[str, tuple[int, int, int, int]]:
    """The catalog's prices as the provider's price sheet (a NULL cache price is the input price)."""
    sheet = {}
    for m in ProviderModel.objects.filter(provider=provider):
        cached = getattr(m, "cached_input_price_per_mtok_micro_usd", None)
        write = getattr(m, "cache_write_price_per_mtok_micro_usd", None)
        p_in = m.input_price_per_mtok_micro_usd or 0
        sheet[m.model_name] = (p_in, m.output_price_per_mtok_micro_usd or 0,
                               p_in if cached is None else cached, p_in if write is None else write)
    return sheet


@pytest.fixture
def orgs(settings, tenant_admin):
    from llm.providers import registry

    servers = {
        "openai": FakeOpenAIOrg(prices=price_sheet("openai"), snapshots=SNAPSHOTS, page_size=1,
                                admin_key="sk-admin-openai-0123456789abcdef"),
        "anthropic": FakeAnthropicOrg(prices=price_sheet("anthropic"), snapshots=SNAPSHOTS, page_size=1,
                                      admin_key="sk-ant-admin01-0123456789abcdef"),
    }
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "test-key", servers["openai"].url + "/v1"
    settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL = "test-key", servers["anthropic"].url
    settings.OPENAI_ADMIN_API_KEY = servers["openai"].admin_key
    settings.ANTHROPIC_ADMIN_API_KEY = servers["anthropic"].admin_key
    settings.PROVIDER_TIMEOUT_SECONDS = 5
    settings.RECONCILE_TIMEOUT_SECONDS = 5
    settings.ROUTER_BACKOFF_BASE_SECONDS = 0
    registry.clear_local()
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_concurrent", value=100)
    yield servers
    registry.clear_local()
    for server in servers.values():
        server.close()


def gateway_call(persona, model: str, *, stream: bool = False, content: str = "What is a patent family?") -> int:
    """A real metered call through the gateway (ASGI fast path -> SDK -> the provider fake)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 64}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    response = persona.client.post(f"/v1/{TASK}/chat/completions", body, format="json")
    if stream:
        b"".join(response)
    return response.status_code
