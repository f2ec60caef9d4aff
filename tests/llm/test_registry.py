"""The provider registry: settings first, then the active admin credential; cached clients; invalidation."""

from __future__ import annotations

import asyncio
import logging

import pytest
from django.test import override_settings

from gateway_project import memo
from gateway_project.memo import GenerationCache
from llm.models import ProviderCredential
from llm.providers import registry
from llm.providers.anthropic_provider import AnthropicProvider
from llm.providers.gemini import GeminiProvider
from llm.providers.offline import OfflineProvider
from llm.providers.openai_provider import OpenAIProvider
from llm.providers.registry import provider_config, provider_get, providers_configured, servable

NO_PROVIDER_SETTINGS = {
    "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "",
    "GROK_API_KEY": "", "GROK_BASE_URL": "https://api.x.ai/v1",
    "GOOGLE_AI_API_KEY": "", "GEMINI_BASE_URL": "",
    "ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": "",
    "OPENAI_COMPATIBLE_BASE_URL": "", "OPENAI_COMPATIBLE_API_KEY": "",
    "PROVIDER_TIMEOUT_SECONDS": 60.0,
    "OFFLINE_PROVIDER_ENABLED": True, "OFFLINE_PROVIDER_MIX": False,
}
KEY_A = "sk-test-aaaaaaaaaaaaaaaaaaaaaaaaaaaa1111"
KEY_B = "sk-test-bbbbbbbbbbbbbbbbbbbbbbbbbbbb2222"


@pytest.fixture(autouse=True)
def clean_registry():
    """No provider configured by the real environment; no client or credential left from another test."""
    registry.clear_local()
    with override_settings(**NO_PROVIDER_SETTINGS):
        yield
    registry.clear_local()


@pytest.fixture
def built(monkeypatch):
    """Records what each real provider class was built with (the key never leaves the test)."""
    calls: list[dict] = []
    for name, build in dict(registry.BUILDERS).items():
        def recording(api_key, base_url, timeout, _name=name, _build=build):
            calls.append({"name": _name, "api_key": api_key, "base_url": base_url, "timeout": timeout})
            return _build(api_key, base_url, timeout)

        monkeypatch.setitem(registry.BUILDERS, name, recording)
    return calls


def credential(provider: str, key: str | None, *, base_url: str = "", active: bool = True) -> ProviderCredential:
    row = ProviderCredential(provider=provider, label=f"{provider} key", base_url=base_url, is_active=active)
    if key:
        row.set_api_key(key)
    row.save()
    return row


# ------------------------------------------------------------------------------------------- offline


def test_offline_is_available_by_default_and_nothing_else_without_configuration(db):
    assert isinstance(provider_get("offline"), OfflineProvider)
    assert provider_get("offline") is provider_get("offline")
    assert providers_configured() == {"offline"}
    for name in ("openai", "grok", "gemini", "anthropic", "openai_compatible", "no-such-provider"):
        assert provider_get(name) is None, name


def test_offline_switched_off_is_not_configured(db):
    with override_settings(OFFLINE_PROVIDER_ENABLED=False):
        assert provider_get("offline") is None
        assert providers_configured() == set()
        with override_settings(OPENAI_API_KEY=KEY_A):
            assert providers_configured() == {"openai"}
    assert isinstance(provider_get("offline"), OfflineProvider)  # switched on again: at once, no restart


def _models(*names: str):
    from catalog.selectors import provider_models_active

    by_name = {m.model_name: m for m in provider_models_active()}
    return [by_name[n] for n in names]


def test_servable_keeps_offline_out_of_a_list_a_configured_real_provider_serves(catalog):
    candidates = _models("offline-pro-m", "gpt-4o", "grok-3", "offline-pro-l")

    # Nothing real configured: offline serves, the unconfigured providers are dropped.
    assert [(m.model_name, type(p)) for m, p in servable(candidates)] == [
        ("offline-pro-m", OfflineProvider), ("offline-pro-l", OfflineProvider)]
    with override_settings(OPENAI_API_KEY=KEY_A):
        assert [(m.model_name, type(p)) for m, p in servable(candidates)] == [("gpt-4o", OpenAIProvider)]
        # A list no configured real provider serves still falls to offline (e.g. a class or a pinned model).
        assert [m.model_name for m, _ in servable(_models("grok-3", "offline-pro-m"))] == ["offline-pro-m"]
        with override_settings(OFFLINE_PROVIDER_MIX=True):  # the operator asked for them mixed: order kept
            assert [m.model_name for m, _ in servable(candidates)] == ["offline-pro-m", "gpt-4o", "offline-pro-l"]
        with override_settings(OFFLINE_PROVIDER_ENABLED=False, OFFLINE_PROVIDER_MIX=True):
            assert [m.model_name for m, _ in servable(candidates)] == ["gpt-4o"]
    with override_settings(OFFLINE_PROVIDER_ENABLED=False):
        assert servable(candidates) == []
    assert servable([]) == []


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(("name", "overrides", "cls", "base_url"), [
    ("openai", {"OPENAI_API_KEY": KEY_A}, OpenAIProvider, "https://api.openai.com/v1"),
    ("grok", {"GROK_API_KEY": KEY_A}, OpenAIProvider, "https://api.x.ai/v1"),
    ("gemini", {"GOOGLE_AI_API_KEY": KEY_A}, GeminiProvider, None),
    ("anthropic", {"ANTHROPIC_API_KEY": KEY_A}, AnthropicProvider, "https://api.anthropic.com"),
    ("openai_compatible", {"OPENAI_COMPATIBLE_BASE_URL": "http://127.0.0.1:11434/v1"}, OpenAIProvider,
     "http://127.0.0.1:11434/v1"),
])
def test_a_settings_key_configures_a_provider(db, built, name, overrides, cls, base_url):
    with override_settings(**overrides):
        provider = provider_get(name)

        assert isinstance(provider, cls)
        assert provider.base_url == base_url
        assert providers_configured() == {"offline", name}
        assert provider_config(name).source == "settings"
    assert built[0]["name"] == name and built[0]["timeout"] == 60.0
    assert built[0]["api_key"] == (None if name == "openai_compatible" else KEY_A)
    if name in {"openai", "grok"}:
        assert provider.name == name


def test_settings_base_urls_and_timeout_are_passed_on(db, built):
    with override_settings(OPENAI_API_KEY=KEY_A, OPENAI_BASE_URL="http://127.0.0.1:9/v1", PROVIDER_TIMEOUT_SECONDS=7,
                           OPENAI_COMPATIBLE_BASE_URL="http://vllm:8000/v1", OPENAI_COMPATIBLE_API_KEY=KEY_B):
        assert provider_get("openai").base_url == "http://127.0.0.1:9/v1"
        assert provider_get("openai_compatible").base_url == "http://vllm:8000/v1"
    assert [(c["name"], c["api_key"], c["timeout"]) for c in built] == [
        ("openai", KEY_A, 7.0), ("openai_compatible", KEY_B, 7.0)]


def test_a_key_alone_does_not_configure_openai_compatible(db):
    with override_settings(OPENAI_COMPATIBLE_API_KEY=KEY_A):
        assert provider_get("openai_compatible") is None


# --------------------------------------------------------------------------------------- credentials


def test_an_active_credential_configures_a_provider_when_settings_have_none(db, built):
    credential("anthropic", KEY_A, base_url="http://127.0.0.1:9")

    provider = provider_get("anthropic")

    assert isinstance(provider, AnthropicProvider) and provider.base_url == "http://127.0.0.1:9"
    assert built == [{"name": "anthropic", "api_key": KEY_A, "base_url": "http://127.0.0.1:9", "timeout": 60.0}]
    assert provider_config("anthropic").source == "credential"
    assert providers_configured() == {"offline", "anthropic"}


def test_a_credential_without_base_url_uses_the_settings_base_url(db, built):
    credential("grok", KEY_A)

    assert provider_get("grok").base_url == "https://api.x.ai/v1"
    assert built[0]["api_key"] == KEY_A


def test_settings_take_precedence_over_a_credential(db, built):
    credential("openai", KEY_B)
    with override_settings(OPENAI_API_KEY=KEY_A):
        assert provider_get("openai") is not None
        assert provider_config("openai").source == "settings"
    assert built[0]["api_key"] == KEY_A


def test_an_inactive_credential_does_not_configure_a_provider(db):
    credential("gemini", KEY_A, active=False)

    assert provider_get("gemini") is None
    assert providers_configured() == {"offline"}


def test_an_openai_compatible_credential_needs_a_base_url_but_no_key(db, built):
    credential("openai_compatible", None, base_url="http://127.0.0.1:8000/v1")

    provider = provider_get("openai_compatible")

    assert isinstance(provider, OpenAIProvider) and provider.base_url == "http://127.0.0.1:8000/v1"
    assert built[0]["api_key"] is None


def test_an_undecryptable_credential_is_skipped_and_its_key_not_logged(db, caplog):
    row = credential("openai", KEY_A)
    ProviderCredential.objects.filter(pk=row.pk).update(encrypted_api_key=row.encrypted_api_key[:-8] + "AAAAAAA=")

    with caplog.at_level(logging.DEBUG):
        assert provider_get("openai") is None

    assert "openai credential is unusable" in caplog.text and KEY_A not in caplog.text


# -------------------------------------------------------------------------------------- cache, changes


def test_clients_are_cached_and_the_metered_path_does_not_query_the_database(db, built,
                                                                            django_assert_num_queries):
    credential("openai", KEY_A)
    first = provider_get("openai")

    with django_assert_num_queries(0):
        for _ in range(100):
            assert provider_get("openai") is first
            assert provider_get("gemini") is None
        providers_configured()
    assert len(built) == 1


def test_a_credential_change_is_picked_up_after_invalidation(db, built):
    row = credential("openai", KEY_A)
    before = provider_get("openai")
    row.set_api_key(KEY_B)
    row.save()

    assert provider_get("openai") is before  # not yet: the cached copy stands until the generation moves

    registry.provider_credentials_invalidate()
    after = provider_get("openai")

    assert after is not before
    assert [c["api_key"] for c in built] == [KEY_A, KEY_B]


def test_deactivating_a_credential_unconfigures_the_provider_after_invalidation(db):
    row = credential("openai", KEY_A)
    assert provider_get("openai") is not None

    row.is_active = False
    row.save()
    registry.provider_credentials_invalidate()

    assert provider_get("openai") is None


def test_another_process_sees_the_change_within_a_second(db, monkeypatch):
    """A second GenerationCache under the same name stands for another worker process."""
    credential("openai", KEY_A)
    other_process = GenerationCache(registry.credential_cache.name)
    assert other_process.get("active", registry._credentials_query)["openai"][0]

    ProviderCredential.objects.filter(provider="openai").update(is_active=False)
    registry.provider_credentials_invalidate()
    assert other_process.get("active", registry._credentials_query)["openai"]  # its copy is still fresh

    now = memo.time.monotonic()
    monkeypatch.setattr(memo.time, "monotonic", lambda: now + 1.5)
    assert other_process.get("active", registry._credentials_query) == {}


def test_the_shared_cache_holds_only_encrypted_keys(db):
    from django.core.cache import cache

    credential("openai", KEY_A)
    registry.stored_credentials()
    generation = registry.credential_cache.generation()
    shared = cache.get(f"{registry.credential_cache.name}:{generation}:active")

    assert shared is not None and KEY_A not in repr(shared)
    assert KEY_A not in repr(provider_config("openai"))


def test_admin_saves_reach_the_registry_on_commit(admin_client, django_capture_on_commit_callbacks, built):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/llm/providercredential/add/", {
            "provider": "anthropic", "label": "org key", "api_key": KEY_A, "base_url": "", "is_active": "on"})
    assert response.status_code == 302
    assert provider_get("anthropic") is not None

    row = ProviderCredential.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/llm/providercredential/{row.pk}/change/", {
            "provider": "anthropic", "label": "org key", "api_key": KEY_B, "base_url": "", "is_active": "on"})
    assert response.status_code == 302
    provider_get("anthropic")
    assert [c["api_key"] for c in built] == [KEY_A, KEY_B]

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(f"/admin/llm/providercredential/{row.pk}/delete/", {"post": "yes"})
    assert provider_get("anthropic") is None


# ------------------------------------------------------------------------------------------- async


@pytest.mark.django_db(transaction=True)
def test_provider_get_works_on_an_event_loop():
    """The gateway calls provider_get from async code: the one credentials query runs off the loop."""
    credential("anthropic", KEY_A)

    async def on_the_loop():
        return provider_get("anthropic"), providers_configured()

    provider, configured = asyncio.run(on_the_loop())

    assert isinstance(provider, AnthropicProvider)
    assert configured == {"offline", "anthropic"}
