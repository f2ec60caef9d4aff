"""Provider credentials: encrypted at rest, write-only in the admin, never shown or logged; key rotation;
production refuses to start without CREDENTIALS_ENCRYPTION_KEY."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import RequestFactory, override_settings
from django.urls import reverse

from llm import crypto
from llm.models import ProviderCredential
from llm.providers import registry

PLAINTEXT = "sk-proj-Zx9QfT3BlbkFJ7uLwq1vN2mR8sK4pD6hY0eWcA5gB3tJ"
OTHER = "sk-proj-Ab1CdE2FgH3IjK4LmN5OpQ6RsT7UvW8XyZ9aBcDeFgHi7777"
BASE_DIR = Path(__file__).resolve().parents[2]

ADD_URL = reverse("admin:llm_providercredential_add")
LIST_URL = reverse("admin:llm_providercredential_changelist")


def change_url(pk: int) -> str:
    return reverse("admin:llm_providercredential_change", args=[pk])


def form(**overrides) -> dict:
    data = {"provider": "openai", "label": "org key", "api_key": PLAINTEXT, "base_url": "", "is_active": "on"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def raw_column(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT encrypted_api_key, last_four FROM {ProviderCredential._meta.db_table} WHERE id = %s",
                       [pk])
        encrypted, last_four = cursor.fetchone()
    return encrypted + "|" + last_four


@pytest.fixture(autouse=True)
def clean_registry():
    registry.clear_local()
    yield
    registry.clear_local()


# ---------------------------------------------------------------------------------------------- crypto


def test_encrypt_decrypt_round_trip():
    token = crypto.encrypt(PLAINTEXT)

    assert PLAINTEXT not in token and token != crypto.encrypt(PLAINTEXT)  # a fresh IV every time
    assert crypto.decrypt(token) == PLAINTEXT
    assert crypto.decrypt(crypto.encrypt("")) == ""


def test_key_rotation_newest_key_first():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(CREDENTIALS_ENCRYPTION_KEY=old):
        under_old = crypto.encrypt(PLAINTEXT)

    with override_settings(CREDENTIALS_ENCRYPTION_KEY=f"{new},{old}"):
        assert crypto.decrypt(under_old) == PLAINTEXT  # old tokens still decrypt
        fresh = crypto.encrypt(PLAINTEXT)  # new tokens use the newest key
        rotated = crypto.reencrypt(under_old)

    with override_settings(CREDENTIALS_ENCRYPTION_KEY=new):  # the old key is dropped
        assert crypto.decrypt(fresh) == crypto.decrypt(rotated) == PLAINTEXT
        with pytest.raises(crypto.CredentialDecryptionError) as failure:
            crypto.decrypt(under_old)
    assert PLAINTEXT not in str(failure.value)


def test_a_tampered_token_does_not_decrypt():
    token = crypto.encrypt(PLAINTEXT)
    tampered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    with pytest.raises(crypto.CredentialDecryptionError):
        crypto.decrypt(tampered)


def test_the_model_never_shows_the_key(db):
    row = ProviderCredential(provider="openai", label="org key")
    row.set_api_key(PLAINTEXT)
    row.save()

    assert row.api_key() == PLAINTEXT
    assert row.last_four == PLAINTEXT[-4:] and row.key_hint == "…" + PLAINTEXT[-4:]
    assert PLAINTEXT not in str(row) and PLAINTEXT not in repr(row)
    short = ProviderCredential(provider="grok", label="short")
    short.set_api_key("sk-short")
    assert short.last_four == "" and short.key_hint == "(set)"  # four of eight characters give too much away


# ------------------------------------------------------------------------------------------------ admin


def test_admin_add_encrypts_the_key_and_never_shows_it(admin_client, caplog):
    with caplog.at_level(logging.DEBUG):
        add_page = admin_client.get(ADD_URL)
        response = admin_client.post(ADD_URL, form())
        assert response.status_code == 302, response.content[:2000]
        row = ProviderCredential.objects.get()
        pages = [
            add_page,
            admin_client.get(LIST_URL),
            admin_client.get(change_url(row.pk)),
            admin_client.get(reverse("admin:llm_providercredential_history", args=[row.pk])),
            admin_client.get(reverse("admin:llm_providercredential_delete", args=[row.pk])),
        ]

    stored = raw_column(row.pk)
    assert PLAINTEXT not in stored
    assert crypto.decrypt(row.encrypted_api_key) == PLAINTEXT
    for page in pages:
        assert page.status_code == 200
        assert PLAINTEXT not in page.content.decode()
        assert PLAINTEXT[:-4] not in page.content.decode()
    assert PLAINTEXT not in caplog.text
    assert all(PLAINTEXT not in entry.change_message for entry in LogEntry.objects.all())

    listing, change = pages[1].content.decode(), pages[2].content.decode()
    assert "…" + PLAINTEXT[-4:] in listing and "org key" in listing
    assert "…" + PLAINTEXT[-4:] in change
    assert "Leave blank to keep the current key" in change
    assert 'type="password"' in change and 'name="api_key"' in change
    assert 'name="api_key" value=' not in change


def test_a_blank_key_keeps_the_current_one_and_a_new_key_replaces_it(admin_client):
    admin_client.post(ADD_URL, form())
    row = ProviderCredential.objects.get()
    token = row.encrypted_api_key

    response = admin_client.post(change_url(row.pk), form(api_key="", label="renamed", base_url="http://127.0.0.1:9/v1"))

    assert response.status_code == 302
    row.refresh_from_db()
    assert (row.label, row.base_url, row.encrypted_api_key) == ("renamed", "http://127.0.0.1:9/v1", token)
    assert row.api_key() == PLAINTEXT

    admin_client.post(change_url(row.pk), form(api_key=OTHER))
    row.refresh_from_db()
    assert row.api_key() == OTHER and row.last_four == OTHER[-4:]
    assert OTHER not in raw_column(row.pk)


def test_a_rejected_form_does_not_echo_the_key(admin_client):
    response = admin_client.post(ADD_URL, form(label=""))  # invalid: no label

    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert PLAINTEXT not in response.content.decode()
    assert not ProviderCredential.objects.exists()


def test_the_admin_validates_credentials(admin_client):
    missing_key = admin_client.post(ADD_URL, form(api_key=""))
    assert "This provider needs an API key" in missing_key.content.decode()

    offline = admin_client.post(ADD_URL, form(provider="offline"))
    assert offline.status_code == 200 and not ProviderCredential.objects.exists()

    local = admin_client.post(ADD_URL, form(provider="openai_compatible", api_key="", base_url=""))
    assert "needs its base URL" in local.content.decode()
    bad_url = admin_client.post(ADD_URL, form(base_url="ftp://example.com"))
    assert "http:// or https://" in bad_url.content.decode()

    local = admin_client.post(ADD_URL, form(provider="openai_compatible", api_key="", base_url="http://vllm:8000/v1"))
    assert local.status_code == 302
    assert ProviderCredential.objects.get(provider="openai_compatible").key_hint == "(no key)"


def test_one_active_credential_per_provider(admin_client):
    assert admin_client.post(ADD_URL, form()).status_code == 302

    second = admin_client.post(ADD_URL, form(label="second", api_key=OTHER))
    assert "already has an active credential" in second.content.decode()

    assert admin_client.post(ADD_URL, form(label="spare", api_key=OTHER, is_active=None)).status_code == 302
    assert ProviderCredential.objects.filter(provider="openai").count() == 2


def test_changing_the_provider_needs_a_new_key(admin_client):
    admin_client.post(ADD_URL, form())
    row = ProviderCredential.objects.get()

    response = admin_client.post(change_url(row.pk), form(provider="anthropic", api_key=""))

    assert "Enter the key for the new provider" in response.content.decode()


def test_the_key_is_kept_out_of_error_reports(admin_user):
    model_admin = admin.site._registry[ProviderCredential]
    request = RequestFactory().get(ADD_URL)
    request.user = admin_user

    model_admin.changeform_view(request)

    assert request.sensitive_post_parameters == ("api_key",)


def test_reencrypt_action_moves_credentials_to_the_newest_key(admin_client):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(CREDENTIALS_ENCRYPTION_KEY=old):
        admin_client.post(ADD_URL, form())
    row = ProviderCredential.objects.get()

    with override_settings(CREDENTIALS_ENCRYPTION_KEY=f"{new},{old}"):
        response = admin_client.post(LIST_URL, {"action": "reencrypt_with_newest_key", "_selected_action": [row.pk]})
    assert response.status_code == 302

    row.refresh_from_db()
    with override_settings(CREDENTIALS_ENCRYPTION_KEY=new):
        assert row.api_key() == PLAINTEXT


def test_the_list_says_when_the_environment_takes_precedence(admin_client):
    admin_client.post(ADD_URL, form())
    with override_settings(OPENAI_API_KEY="sk-from-env-0000000000000000"):
        listing = admin_client.get(LIST_URL).content.decode()
    assert "OPENAI_API_KEY in the environment takes precedence" in listing
    with override_settings(OPENAI_API_KEY=""):
        assert "takes precedence" not in admin_client.get(LIST_URL).content.decode()


# --------------------------------------------------------------------------------------------- settings


def _start(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "GATEWAY_ENV": "production",
        "SECRET_KEY": "x" * 50,
        "ALLOWED_HOSTS": "gateway.example.com",
        "DATABASE_URL": "postgres://gateway:secret@127.0.0.1:5999/gateway",
        "REDIS_URL": "redis://127.0.0.1:6999/0",
        **extra_env,
    }
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print('started', len(settings.CREDENTIALS_ENCRYPTION_KEY.split(',')))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                          timeout=120)


def test_production_refuses_to_start_without_an_encryption_key():
    missing = _start({})
    assert missing.returncode != 0
    assert "ImproperlyConfigured" in missing.stderr and "CREDENTIALS_ENCRYPTION_KEY" in missing.stderr

    malformed = _start({"CREDENTIALS_ENCRYPTION_KEY": "not-a-fernet-key"})
    assert malformed.returncode != 0 and "Fernet keys" in malformed.stderr

    keys = f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}"
    started = _start({"CREDENTIALS_ENCRYPTION_KEY": keys})
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "started 2"


def test_embedded_mode_generates_a_private_key_once(tmp_path, monkeypatch):
    from gateway_project import settings as settings_module

    monkeypatch.setattr(settings_module, "VAR_DIR", tmp_path)
    key = settings_module._embedded_credentials_key()

    path = tmp_path / "credentials_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
    assert settings_module._embedded_credentials_key() == key
    assert list(tmp_path.iterdir()) == [path]  # no staging file left behind


def test_the_key_check_accepts_lists_and_refuses_garbage():
    from gateway_project.settings import _fernet_keys_check

    one, two = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert _fernet_keys_check(f" {one} , {two} ") == f"{one},{two}"
    for bad in ("", ",", "abc", one[:-4]):
        with pytest.raises(ImproperlyConfigured):
            _fernet_keys_check(bad)
