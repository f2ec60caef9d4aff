"""Which providers are configured in this process, and their clients, by provider name.

A provider is configured by its settings (environment) first:

    openai             OPENAI_API_KEY            (+ OPENAI_BASE_URL)
    grok               GROK_API_KEY              (+ GROK_BASE_URL, default https://api.x.ai/v1)
    gemini             GOOGLE_AI_API_KEY         (+ GEMINI_BASE_URL)
    anthropic          ANTHROPIC_API_KEY         (+ ANTHROPIC_BASE_URL)
    openai_compatible  OPENAI_COMPATIBLE_BASE_URL (+ OPENAI_COMPATIBLE_API_KEY, optional)

and otherwise by the provider's active ProviderCredential (admin), decrypted in this process
(a credential without a base URL uses the settings' base URL). `offline` needs no configuration and
serves canned text, so it is configured only while OFFLINE_PROVIDER_ENABLED (on in the embedded
default, off with GATEWAY_ENV=production), and `servable` keeps it out of any candidate list that a
configured real provider serves unless OFFLINE_PROVIDER_MIX says an operator wants them mixed.

The active credentials are read through a GenerationCache: the shared cache holds only their
encrypted form, each process keeps a local copy, and an admin save bumps the generation so every
process rebuilds its clients within a second. The metered path therefore does no database query
for credentials. Clients are cached per process by (name, key fingerprint, base URL).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError

from gateway_project.memo import GenerationCache
from llm.crypto import CredentialDecryptionError, decrypt
from llm.providers.base import Provider
from llm.providers.offline import OfflineProvider

if TYPE_CHECKING:
    from catalog.selectors import ModelInfo

logger = logging.getLogger(__name__)

OFFLINE = "offline"

credential_cache = GenerationCache("provider-credentials")

# provider name -> (settings name of the key, settings name of the base URL)
ENV_SETTINGS: dict[str, tuple[str, str]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "grok": ("GROK_API_KEY", "GROK_BASE_URL"),
    "gemini": ("GOOGLE_AI_API_KEY", "GEMINI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "openai_compatible": ("OPENAI_COMPATIBLE_API_KEY", "OPENAI_COMPATIBLE_BASE_URL"),
}
KEYLESS_PROVIDERS = frozenset({"openai_compatible"})  # configured by a base URL; the key is optional


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    api_key: str | None
    base_url: str | None
    source: str  # "settings" or "credential"

    def __repr__(self) -> str:  # never the key
        return f"ProviderConfig(name={self.name!r}, base_url={self.base_url!r}, source={self.source!r})"

    @property
    def fingerprint(self) -> str:
        return _key_fingerprint(self.api_key) if self.api_key else "-"


@lru_cache(maxsize=64)
def _key_fingerprint(api_key: str) -> str:  # asked for on every call of every candidate
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


# --- builders (provider modules are imported lazily) ---------------------------------------------


def provider_sdks_import() -> None:
    """Import every provider SDK now (a server's start-up), not inside the first call that needs one."""
    import llm.providers.anthropic_provider  # noqa: F401
    import llm.providers.gemini  # noqa: F401
    import llm.providers.openai_provider  # noqa: F401


def _openai(name: str) -> Callable[[str | None, str | None, float], Provider]:
    def build(api_key: str | None, base_url: str | None, timeout: float) -> Provider:
        from llm.providers.openai_provider import OpenAIProvider

        return OpenAIProvider(name, api_key, base_url, timeout=timeout)

    return build


def _gemini(api_key: str | None, base_url: str | None, timeout: float) -> Provider:
    from llm.providers.gemini import GeminiProvider

    return GeminiProvider(api_key, base_url, timeout=timeout)


def _anthropic(api_key: str | None, base_url: str | None, timeout: float) -> Provider:
    from llm.providers.anthropic_provider import AnthropicProvider

    return AnthropicProvider(api_key, base_url, timeout=timeout)


BUILDERS: dict[str, Callable[[str | None, str | None, float], Provider]] = {
    "openai": _openai("openai"),
    "grok": _openai("grok"),
    "openai_compatible": _openai("openai_compatible"),
    "gemini": _gemini,
    "anthropic": _anthropic,
}


# --- stored credentials ------------------------------------------------------------------------


def _credentials_query() -> dict[str, tuple[str, str]]:
    from llm.models import ProviderCredential

    return {
        provider: (encrypted, base_url)
        for provider, encrypted, base_url in ProviderCredential.objects.filter(is_active=True).values_list(
            "provider", "encrypted_api_key", "base_url"
        )
    }


def _credentials_query_off_loop() -> dict[str, tuple[str, str]]:
    """Run the query in a worker thread when called on an event loop (the ORM refuses to run there)."""
    from llm.db import release_db_connections

    def run() -> dict[str, tuple[str, str]]:
        try:
            return _credentials_query()
        finally:
            release_db_connections()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="provider-credentials") as pool:
        return pool.submit(run).result()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def stored_credentials() -> dict[str, tuple[str, str]]:
    """Active credentials as {provider: (encrypted key, base URL)}: cached, never decrypted here.

    Only a miss in both the local and the shared cache queries the database (once per
    generation and process). On an event loop that query runs in a short-lived worker thread.
    """
    build = _credentials_query_off_loop if _in_event_loop() else _credentials_query
    return credential_cache.get("active", build)


def provider_credentials_invalidate() -> None:
    """Every process drops its credentials and rebuilds its clients within a second."""
    credential_cache.invalidate()


@lru_cache(maxsize=64)
def _decrypted(token: str) -> str:
    return decrypt(token)


# --- resolution ------------------------------------------------------------------------------------


def _setting(name: str) -> str:
    return (getattr(settings, name, "") or "").strip()


def provider_config(name: str) -> ProviderConfig | None:
    """Where a provider's key and base URL come from, or None when it is not configured."""
    if name not in ENV_SETTINGS:
        return None
    key_setting, url_setting = ENV_SETTINGS[name]
    env_key, env_url = _setting(key_setting), _setting(url_setting)
    if name in KEYLESS_PROVIDERS:
        if env_url:
            return ProviderConfig(name, env_key or None, env_url, "settings")
    elif env_key:
        return ProviderConfig(name, env_key, env_url or None, "settings")

    try:
        stored = stored_credentials().get(name)
    except DatabaseError:  # the database being down must not take the env-configured providers with it
        logger.warning("provider credentials unavailable (database error); using settings only", exc_info=True)
        return None
    if stored is None:
        return None
    encrypted, base_url = stored
    try:
        api_key = _decrypted(encrypted) if encrypted else ""
    except CredentialDecryptionError as error:
        logger.error("the active %s credential is unusable: %s", name, error)
        return None
    base_url = base_url or env_url
    if name in KEYLESS_PROVIDERS:
        return ProviderConfig(name, api_key or None, base_url, "credential") if base_url else None
    return ProviderConfig(name, api_key, base_url or None, "credential") if api_key else None


_instances: dict[tuple[str, str, str | None], Provider] = {}
_instances_lock = threading.Lock()


@cache
def _offline() -> OfflineProvider:
    return OfflineProvider()


def provider_get(name: str) -> Provider | None:
    """The provider client, or None when it is not configured (no key / base URL)."""
    if name == OFFLINE:
        return _offline() if settings.OFFLINE_PROVIDER_ENABLED else None
    config = provider_config(name)
    if config is None:
        return None
    instance_key = (name, config.fingerprint, config.base_url)
    provider = _instances.get(instance_key)
    if provider is not None:
        return provider
    with _instances_lock:
        provider = _instances.get(instance_key)
        if provider is None:
            provider = BUILDERS[name](config.api_key, config.base_url, float(settings.PROVIDER_TIMEOUT_SECONDS))
            # A new key or URL replaces the provider's previous client in this process.
            for stale in [k for k in _instances if k[0] == name]:
                del _instances[stale]
            _instances[instance_key] = provider
    return provider


def providers_configured() -> set[str]:
    configured = {name for name in ENV_SETTINGS if provider_config(name) is not None}
    return (configured | {OFFLINE}) if settings.OFFLINE_PROVIDER_ENABLED else configured


def servable(models: list[ModelInfo]) -> list[tuple[ModelInfo, Provider]]:
    """The candidates that can be served now, each with its client, in their given order.

    A model whose provider is not configured is dropped. Offline answers are canned: where a
    configured real provider serves any of the candidates, the offline models are dropped too
    (they would otherwise win on cost ties and latency), unless OFFLINE_PROVIDER_MIX.
    """
    pairs = [(m, p) for m in models if (p := provider_get(m.provider)) is not None]
    if settings.OFFLINE_PROVIDER_MIX or all(m.provider == OFFLINE for m, _ in pairs):
        return pairs
    return [(m, p) for m, p in pairs if m.provider != OFFLINE]


def clear_local() -> None:
    """Forget this process's clients and cached credentials (tests; the shared cache was cleared)."""
    with _instances_lock:
        _instances.clear()
    _decrypted.cache_clear()
    credential_cache.clear_local()
