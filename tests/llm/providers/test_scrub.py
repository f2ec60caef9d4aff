"""The credential scrubber that every provider error's text passes through before the log and the ledger."""

from __future__ import annotations

import pytest

from llm.providers.base import ProviderAuthError, ProviderConnectionError
from llm.providers.scrub import REDACTED, scrub, secret_register
from tests.llm.providers.conftest import chat_error, collect_until_error

OPENAI_KEY = "sk-live-abcdefghijklmnopqrstuvwxyz0123456789ABCD"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


@pytest.mark.parametrize(("text", "secret"), [
    (f"Incorrect API key provided: {OPENAI_KEY}. You can find your API key at https://platform.openai.com.",
     OPENAI_KEY),
    ("Incorrect API key provided: sk-proj-********************************************ab12.",
     "sk-proj-****"),
    ("invalid x-api-key: sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz-0123456789_abcdefghijkl", "sk-ant-api03"),
    ("Incorrect API key provided: xai-0123456789abcdefghijABCDEFGHIJ", "xai-0123456789"),
    ("GET /v1beta/models/x:generateContent?alt=sse&key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv failed",
     "AIzaSyA1b2C3"),
    ("request header Authorization: Bearer abc.def-ghi_jkl~mno rejected", "abc.def-ghi"),
    ("upstream sent 'Authorization: Basic dXNlcjpwYXNzd29yZA==' back", "dXNlcjpwYXNzd29yZA"),
    ("proxy https://svc-user:hunter2secret@10.0.3.7:8443/v1 refused", "hunter2secret"),
    ('{"api_key": "plain-looking-secret-value", "model": "m"}', "plain-looking-secret-value"),
    ("retry with ?api_key=plainsecret123&x=1 or token=abc123def456", "plainsecret123"),
    ("retry with ?api_key=plainsecret123&x=1 or token=abc123def456", "abc123def456"),
    (f"session {JWT} expired", "eyJhbGciOiJIUzI1NiIs"),
])
def test_credentials_are_removed(text, secret):
    scrubbed = scrub(text)

    assert secret not in scrubbed
    assert REDACTED in scrubbed


def test_what_operators_need_stays():
    text = ("HTTP 500: upstream connect error or disconnect/reset before headers. reset reason: connection failure, "
            "transport failure reason: delayed connect error: 111 (Cannot connect to host 10.0.3.7:8443)")

    assert scrub(text) == text  # hosts and ports are for the log and the ledger; tenants never see this text
    assert scrub("max_tokens: 5 is too small; the monkey=1 parameter is unknown") == \
        "max_tokens: 5 is too small; the monkey=1 parameter is unknown"


def test_a_registered_key_is_removed_whatever_its_shape():
    secret_register("local-server-password-42")

    assert scrub("the server said: bad credentials local-server-password-42 (x)") == \
        f"the server said: bad credentials {REDACTED} (x)"


def test_an_error_keeps_the_scrubbed_text_apart_from_our_message():
    error = ProviderAuthError(f"HTTP 401: Incorrect API key provided: {OPENAI_KEY}", provider="openai")

    assert OPENAI_KEY not in error.detail and "Incorrect API key provided" in error.detail
    assert OPENAI_KEY not in str(error) and "Incorrect" not in str(error) and "openai" in error.message
    assert error.code == "provider_auth"


@pytest.mark.parametrize("mode", ["chat", "stream"])
def test_a_provider_that_quotes_a_key_back_has_it_scrubbed_from_the_detail(kit, mode):
    key = "sk-live-" + "k" * 40  # not this provider's configured key: the pattern finds it
    kit.fake.fail_next(401, message=f"Incorrect API key provided: Bearer {key}")

    error = kit.run(chat_error if mode == "chat" else lambda p: _stream_error(p))

    assert type(error) is ProviderAuthError
    assert key not in error.detail and "Incorrect API key provided" in error.detail
    assert "Incorrect" not in error.message and kit.kind in error.message


async def _stream_error(provider):
    return (await collect_until_error(provider))[1]


def test_a_refused_connection_keeps_the_host_in_the_detail_only(kits):
    from llm.providers.openai_provider import OpenAIProvider
    from tests.fakes import closed_port

    port = closed_port()
    kit = kits("openai")

    async def scenario(_):
        provider = OpenAIProvider("openai", "test-key", f"http://127.0.0.1:{port}/v1", timeout=5)
        try:
            return await chat_error(provider)
        finally:
            await provider.aclose()

    error = kit.run(scenario)

    assert type(error) is ProviderConnectionError
    assert str(port) in error.detail  # where it went: for operators
    assert str(port) not in error.message and "127.0.0.1" not in error.message
