"""What a tenant sees when a provider fails, through the public URLs, the real SDKs and the loopback
fakes: our code and our words, never the provider's text, the platform's key, hosts or ports (in a
JSON error, a stream's in-band error event, a task pipeline's error). The provider's text goes,
scrubbed of credentials, to the ledger row's attempts. A provider that refuses the platform's key
is skipped for the next candidate, its model's breaker opens at once, and super admins get one
alert per model per cool-down."""

from __future__ import annotations

import json
import threading

import pytest

from catalog.models import ProviderModel
from catalog.selectors import catalog_cache_invalidate, provider_models_active
from llm import router
from metering.models import UsageLog
from metering.services import policy_rule_set
from tenants.models import User
from tests.fakes import FakeAnthropic, FakeGemini, FakeOpenAI, closed_port

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "LLM1_PRIOR_ART"  # PRO: BASE_S (gpt-4o-mini), then BASE_M (claude-haiku-4-5, gemini-2.5-flash)
# The platform's keys, shaped like the real ones; the fakes are told to expect other keys, so they refuse these.
KEYS = {"openai": "sk-live-" + "abc123XYZ" * 5, "anthropic": "sk-ant-api03-" + "Q7w8E9r0T1" * 5,
        "gemini": "AIzaSy" + "B2c3D4e5F6" * 3 + "g7h"}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
INTERNAL = "Cannot connect to host 10.0.3.7:8443 ssl:default [Connect call failed ('10.0.3.7', 8443)]"
ALERT_SUBJECT = "refused the platform's credentials"


@pytest.fixture
def fakes(settings, tenant_admin):
    """OpenAI, Anthropic and Gemini fakes that accept only their own key (the gateway is configured with
    another); no offline models, so a call's candidates are exactly the configured real models."""
    from llm.providers import registry

    servers = {"openai": FakeOpenAI(api_key="the-right-key"), "anthropic": FakeAnthropic(api_key="the-right-key"),
               "gemini": FakeGemini(api_key="the-right-key")}
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = KEYS["openai"], servers["openai"].url + "/v1"
    settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL = KEYS["anthropic"], servers["anthropic"].url
    settings.GOOGLE_AI_API_KEY, settings.GEMINI_BASE_URL = KEYS["gemini"], servers["gemini"].url
    settings.GROK_API_KEY = ""
    settings.PROVIDER_TIMEOUT_SECONDS = 5
    settings.ROUTER_BACKOFF_BASE_SECONDS = 0
    ProviderModel.objects.filter(provider="offline").update(is_active=False)
    catalog_cache_invalidate()
    registry.clear_local()
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_concurrent", value=100)
    User.objects.create_superuser(username="ops-root", email="ops@example.com", password="x-9f2k-long-password")
    yield servers
    registry.clear_local()
    for server in servers.values():
        server.close()


def accept(fake) -> None:
    """From now on the fake takes the platform's key (it answers normally)."""
    fake.api_key = None


def call(persona, model: str, *, stream: bool = False):
    body = {"model": model, "messages": [{"role": "user", "content": "What is a patent family?"}], "max_tokens": 32}
    if stream:
        body.update(stream=True)
    response = persona.client.post(f"/v1/{TASK}/chat/completions", body, format="json")
    if stream:
        raw = b"".join(response).decode()
        return response, raw, [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]
    return response, response.content.decode(), response.json()


def assert_ours_only(text: str, *leaks: str) -> None:
    """Nothing of the provider's in what the tenant got."""
    for leak in ("Incorrect API key", "invalid x-api-key", "API key not valid", "10.0.3.7", "8443", "Cannot connect",
                 "127.0.0.1", "fake ", *KEYS.values(), *leaks):
        assert leak not in text, (leak, text)


def breaker(model_name: str) -> str:
    router.clear_local()  # read the shared state, as another process would
    model = next(m for m in provider_models_active() if m.model_name == model_name)
    return router.breaker_state(model).state


def alerts(mailoutbox) -> list:
    for thread in threading.enumerate():
        if thread.name.startswith("provider-alert-"):
            thread.join(10)
    return [m for m in mailoutbox if ALERT_SUBJECT in m.subject]


# ---- a refused key ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", list(MODELS))
def test_a_refused_key_never_reaches_the_tenant_and_alerts_super_admins(fakes, tenant_admin, mailoutbox, provider,
                                                                      stream):
    if provider != "openai":  # OpenAI's fake quotes the wrong key back by itself; the others are made to
        accept(fakes[provider])
        fakes[provider].fail_next(401, message=f"invalid credentials: Bearer {KEYS[provider]} key={KEYS[provider]}")

    response, raw, body = call(tenant_admin, MODELS[provider], stream=stream)

    if stream:  # the in-band error event, then [DONE]
        assert response.status_code == 200 and raw.endswith("data: [DONE]\n\n")
        error = body[-1]["error"]
    else:
        assert response.status_code == 502
        error = body["error"]
    assert error["code"] == "provider_auth" and error["type"] == "provider_error"
    assert provider in error["message"] and "configuration problem on our side" in error["message"]
    assert_ours_only(raw)

    log = UsageLog.objects.get()
    assert log.status == UsageLog.Status.ERROR and log.error_code == "provider_auth"
    [attempt] = log.attempts
    assert attempt["error"] == "provider_auth" and "401" in attempt["detail"] and "[redacted]" in attempt["detail"]
    assert KEYS[provider] not in json.dumps(log.attempts)
    assert breaker(MODELS[provider]) == "open"  # after one failure, not ROUTER_BREAKER_FAILURES

    [alert] = alerts(mailoutbox)
    assert alert.to == ["ops@example.com"] and MODELS[provider] in alert.subject
    assert KEYS[provider] not in alert.body and "[redacted]" in alert.body


def test_the_tenants_ledger_view_never_shows_the_providers_text(fakes, tenant_admin, mailoutbox):
    call(tenant_admin, MODELS["openai"])  # OpenAI's fake quotes the wrong key back in its 401
    assert "401" in UsageLog.objects.get().attempts[0]["detail"]  # kept for operators
    page = tenant_admin.client.get("/api/usage/logs/")
    assert page.status_code == 200
    [row] = page.json()["results"]
    assert row["error_code"] == "provider_auth" and row["attempts"][0]["error"] == "provider_auth"
    assert "detail" not in row["attempts"][0]
    assert "Incorrect API key" not in page.content.decode() and KEYS["openai"] not in page.content.decode()


def test_gemini_answers_a_wrong_key_with_a_400_and_it_is_still_an_auth_failure(fakes, tenant_admin, mailoutbox):
    response, raw, body = call(tenant_admin, MODELS["gemini"])  # its fake refuses as Gemini does: 400 API_KEY_INVALID

    assert response.status_code == 502 and body["error"]["code"] == "provider_auth"
    assert_ours_only(raw)
    assert breaker(MODELS["gemini"]) == "open"
    assert len(alerts(mailoutbox)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_auto_falls_back_past_a_refused_key_and_opens_that_models_breaker(fakes, tenant_admin, mailoutbox, settings,
                                                                         stream):
    accept(fakes["anthropic"])  # candidates: gpt-4o-mini (BASE_S, refuses our key), then claude-haiku-4-5
    settings.GOOGLE_AI_API_KEY = ""

    response, raw, body = call(tenant_admin, "auto", stream=stream)

    assert response.status_code == 200, raw
    if stream:
        assert "error" not in raw and body[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        assert body["model"] == "claude-haiku-4-5" and body["choices"][0]["message"]["content"]
    log = UsageLog.objects.get()
    assert log.status == UsageLog.Status.SUCCESS and log.model_name == "claude-haiku-4-5"
    assert [(a["model"], a["error"]) for a in log.attempts] == [("gpt-4o-mini", "provider_auth")]
    assert "Incorrect API key provided" in log.attempts[0]["detail"]
    assert KEYS["openai"] not in log.attempts[0]["detail"]
    assert breaker("gpt-4o-mini") == "open" and breaker("claude-haiku-4-5") == "closed"
    assert len(alerts(mailoutbox)) == 1

    # The next call does not try the refused model at all while its breaker is open.
    seen = len(fakes["openai"].received)
    response, _, _ = call(tenant_admin, "auto", stream=stream)
    assert response.status_code == 200 and len(fakes["openai"].received) == seen


def test_super_admins_are_alerted_once_per_model_per_cool_down(fakes, tenant_admin, mailoutbox, settings):
    settings.ROUTER_BREAKER_COOLDOWN_SECONDS = 0  # every call probes the model again, and is refused again

    statuses = [call(tenant_admin, MODELS["openai"])[0].status_code for _ in range(3)]
    statuses.append(call(tenant_admin, MODELS["anthropic"])[0].status_code)

    assert statuses == [502] * 4
    assert len(fakes["openai"].received) == 3  # it was asked each time
    sent = alerts(mailoutbox)
    assert sorted(m.subject.rsplit(" ", 1)[1] for m in sent) == ["claude-haiku-4-5", "gpt-4o-mini"]


def test_a_task_pipeline_shows_our_error_only(fakes, tenant_admin, settings):
    """Drafting (LLM2_DRAFT, PRO_M first: gpt-4o) fails on its first step: the pipeline's error is ours."""
    accept(fakes["openai"])
    fakes["openai"].fail_next(403, message=f"Project proj_abc does not have access; key {KEYS['openai']}")
    settings.ANTHROPIC_API_KEY = settings.GOOGLE_AI_API_KEY = ""  # gpt-4o is the only candidate

    response = tenant_admin.client.post("/api/drafting/", {"disclosure": "A door hinge with a damper that stiffens "
                                                                         "when the door closes too fast."},
                                        format="json")

    assert response.status_code == 502, response.content
    body = response.json()
    assert body["error"]["code"] == "provider_auth" and "openai" in body["error"]["message"]
    assert_ours_only(response.content.decode(), "proj_abc", "does not have access")
    assert "does not have access" in UsageLog.objects.get().attempts[0]["detail"]


# ---- hosts, ports and provider text in other failures -----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_internal_host_in_a_500_stays_in_the_ledger(fakes, tenant_admin, stream):
    accept(fakes["openai"])
    fakes["openai"].fail_next(500, message=f"upstream connect error: {INTERNAL}")

    response, raw, body = call(tenant_admin, MODELS["openai"], stream=stream)

    error = body[-1]["error"] if stream else body["error"]
    assert (response.status_code, error["code"]) == (200 if stream else 503, "provider_overloaded")
    assert "openai" in error["message"] and "Retrying may help" in error["message"]
    assert_ours_only(raw)
    [attempt] = UsageLog.objects.get().attempts
    assert INTERNAL in attempt["detail"]  # for operators
    assert breaker(MODELS["openai"]) == "closed"  # one overload is not a reason to open it


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_refused_connection_shows_no_host_or_port(fakes, tenant_admin, settings, stream):
    port = closed_port()
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"

    response, raw, body = call(tenant_admin, MODELS["openai"], stream=stream)

    error = body[-1]["error"] if stream else body["error"]
    assert (response.status_code, error["code"]) == (200 if stream else 503, "provider_connection")
    assert "could not reach the openai provider" in error["message"]
    assert_ours_only(raw, str(port))
    [attempt] = UsageLog.objects.get().attempts
    assert str(port) in attempt["detail"]
