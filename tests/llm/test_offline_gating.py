"""The offline provider serves only where it is switched on and never competes with a real provider.

Through the public API: `/v1/LLM2_DRAFT/chat/completions` and `/models`, with the real OpenAI SDK
against the loopback fake. PRO on LLM2_DRAFT allows PRO_M (gpt-4o, grok-3, offline-pro-m) and PRO_L
(gemini-2.5-pro, claude-sonnet-4-5, offline-pro-l); offline-pro-m costs what gpt-4o costs, so before
the gate the router sent traffic to offline as soon as it was measured to be faster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metering.models import UsageLog, UsageMeter, UsageReservation
from metering.services import meters_reconcile
from tests.conftest import Persona, assert_error
from tests.fakes import FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM2_DRAFT"
MESSAGES = [{"role": "user", "content": "Draft claim 1 for a folding hinge"}]
NO_PROVIDER_SETTINGS = {
    "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "",
    "GROK_API_KEY": "", "GOOGLE_AI_API_KEY": "", "ANTHROPIC_API_KEY": "",
    "OPENAI_COMPATIBLE_BASE_URL": "", "OPENAI_COMPATIBLE_API_KEY": "",
}
BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_real_provider(settings):
    """Only what each test configures: nothing from the machine's environment."""
    from llm.providers import registry

    for name, value in NO_PROVIDER_SETTINGS.items():
        setattr(settings, name, value)
    settings.OFFLINE_PROVIDER_ENABLED, settings.OFFLINE_PROVIDER_MIX = True, False
    registry.clear_local()
    yield
    registry.clear_local()


@pytest.fixture
def openai_fake(settings):
    from llm.providers import registry

    server = FakeOpenAI()
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "test-key", server.url + "/v1"
    settings.PROVIDER_TIMEOUT_SECONDS = 5
    settings.ROUTER_BACKOFF_BASE_SECONDS = 0
    registry.clear_local()
    yield server
    server.close()


def chat(persona: Persona, model: str = "auto"):
    return persona.client.post(f"/v1/{TASK}/chat/completions",
                               {"model": model, "messages": MESSAGES, "max_tokens": 20}, format="json")


def model_ids(persona: Persona) -> set[str]:
    r = persona.client.get(f"/v1/{TASK}/models")
    assert r.status_code == 200, r.content
    return {entry["id"] for entry in r.json()["data"]}


def assert_settled() -> None:
    assert not UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).exists()
    assert not UsageMeter.objects.filter(reserved__gt=0).exists()
    assert meters_reconcile() == []


@pytest.mark.parametrize("strategy", ["cost", "performance", "availability"])
def test_auto_is_served_by_the_real_provider_even_when_offline_is_faster(settings, tenant_admin, openai_fake,
                                                                          strategy):
    settings.ROUTER_STRATEGY = strategy
    openai_fake.delay_next(0.3)  # gpt-4o is measured slow; offline-pro-m, as cheap, would answer at once
    served = []
    for _ in range(3):
        r = chat(tenant_admin)
        assert r.status_code == 200, r.content
        served.append(r.json()["model"])

    assert served == ["gpt-4o"] * 3
    openai_fake.wait_idle()
    assert len(openai_fake.billed) == 3
    assert not UsageLog.objects.filter(provider="offline").exists()
    assert_settled()


def test_a_failing_real_provider_never_falls_back_to_canned_text(tenant_admin, openai_fake):
    openai_fake.fail_next(503)
    r = chat(tenant_admin)

    assert_error(r, 503, "provider_overloaded")
    log = UsageLog.objects.get()
    assert [a["model"] for a in log.attempts] == ["gpt-4o"]
    assert log.provider != "offline"
    assert_settled()


def test_an_operator_may_mix_offline_in_explicitly(settings, tenant_admin, openai_fake):
    settings.OFFLINE_PROVIDER_MIX = True
    openai_fake.delay_next(0.3)

    first, second = chat(tenant_admin), chat(tenant_admin)

    assert first.json()["model"] == "gpt-4o"
    assert second.json()["model"] == "offline-pro-m"  # as cheap and measured faster: mixing was asked for
    assert_settled()


def test_with_a_real_provider_models_lists_what_it_and_offline_serve(tenant_admin, openai_fake):
    ids = model_ids(tenant_admin)

    # grok-3, gemini-2.5-pro and claude-sonnet-4-5 are on the plan but their providers are not configured.
    assert ids == {"PRO_M", "PRO_L", "gpt-4o", "offline-pro-m", "offline-pro-l"}
    for model in sorted(ids):
        r = chat(tenant_admin, model)
        assert r.status_code == 200, (model, r.content)
    # Named explicitly, the clearly labelled offline models still answer; PRO_L has no configured real model.
    assert chat(tenant_admin, "PRO_L").json()["model"] == "offline-pro-l"
    assert chat(tenant_admin, "PRO_M").json()["model"] == "gpt-4o"
    assert_settled()


def test_offline_switched_off_with_a_real_provider(settings, tenant_admin, openai_fake):
    settings.OFFLINE_PROVIDER_ENABLED = False

    assert model_ids(tenant_admin) == {"PRO_M", "gpt-4o"}
    assert chat(tenant_admin).json()["model"] == "gpt-4o"
    assert_error(chat(tenant_admin, "offline-pro-m"), 503, "no_provider_available")
    assert_error(chat(tenant_admin, "PRO_L"), 503, "no_provider_available")
    assert_settled()


def test_offline_switched_off_and_nothing_configured_is_503_and_settled(settings, tenant_admin):
    settings.OFFLINE_PROVIDER_ENABLED = False

    r = chat(tenant_admin)

    assert_error(r, 503, "no_provider_available")
    log = UsageLog.objects.get()
    assert (log.status, log.error_code) == (UsageLog.Status.ERROR, "no_provider_available")
    assert (log.tokens_in, log.tokens_out, log.cost_micro_usd) == (0, 0, 0)
    assert UsageReservation.objects.exists()  # it was admitted, and its holds were settled
    assert_settled()
    assert model_ids(tenant_admin) == set()


def test_offline_on_and_nothing_else_serves_and_lists_offline_only(tenant_admin):
    assert model_ids(tenant_admin) == {"PRO_M", "PRO_L", "offline-pro-m", "offline-pro-l"}
    assert chat(tenant_admin).json()["model"] == "offline-pro-m"
    assert_settled()


# --- the settings' defaults, as a fresh process reads them ----------------------------------------


def _offline_settings(extra_env: dict[str, str]) -> str:
    from cryptography.fernet import Fernet

    env = {"PATH": os.environ.get("PATH", ""), "DJANGO_SETTINGS_MODULE": "gateway_project.settings", **extra_env}
    if env.get("GATEWAY_ENV") == "production":
        env = {"SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "gateway.example.com",
               "DATABASE_URL": "postgres://gateway:secret@127.0.0.1:5999/gateway", "REDIS_URL": "redis://127.0.0.1:6999/0",
               "CREDENTIALS_ENCRYPTION_KEY": Fernet.generate_key().decode(), **env}
    code = ("import django; django.setup(); from django.conf import settings; "
            "from llm.providers.registry import provider_get; "
            "print(settings.OFFLINE_PROVIDER_ENABLED, settings.OFFLINE_PROVIDER_MIX, "
            "provider_get('offline') is not None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_offline_is_on_in_the_embedded_default_and_off_in_production():
    assert _offline_settings({}) == "True False True"
    assert _offline_settings({"GATEWAY_ENV": "production"}) == "False False False"
    assert _offline_settings({"GATEWAY_ENV": "production", "OFFLINE_PROVIDER_ENABLED": "true",
                              "OFFLINE_PROVIDER_MIX": "true"}) == "True True True"
    assert _offline_settings({"OFFLINE_PROVIDER_ENABLED": "false"}) == "False False False"
