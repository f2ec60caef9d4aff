"""Admin keys in Django Admin: write-only, encrypted at rest, never shown again; the runs are read-only."""

from __future__ import annotations

import pytest
from django.test import Client

from llm.reconcile.models import ProviderAdminCredential
from tenants.models import User

pytestmark = pytest.mark.django_db

SECRET = "sk-admin-verysecret-0123456789abcdef"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser(username="root", email="r@example.com", password="x-Long-42-pw"))
    return client


def test_an_admin_key_is_stored_encrypted_and_never_shown(admin_client):
    response = admin_client.post("/admin/llm/provideradmincredential/add/",
                                 {"provider": "openai", "label": "org admin", "admin_key": SECRET, "is_active": "on"})
    assert response.status_code == 302, response.content[:2000]
    credential = ProviderAdminCredential.objects.get()
    assert SECRET not in credential.encrypted_admin_key and credential.admin_key() == SECRET
    assert credential.last_four == "cdef"
    for url in ("/admin/llm/provideradmincredential/", f"/admin/llm/provideradmincredential/{credential.pk}/change/"):
        page = admin_client.get(url)
        assert page.status_code == 200 and SECRET not in page.content.decode()
    # Saving without typing the key again keeps it.
    response = admin_client.post(f"/admin/llm/provideradmincredential/{credential.pk}/change/",
                                 {"provider": "openai", "label": "renamed", "admin_key": "", "is_active": "on"})
    assert response.status_code == 302
    credential.refresh_from_db()
    assert (credential.label, credential.admin_key()) == ("renamed", SECRET)


def test_a_new_admin_credential_needs_a_key(admin_client):
    response = admin_client.post("/admin/llm/provideradmincredential/add/",
                                 {"provider": "anthropic", "label": "none", "admin_key": "", "is_active": "on"})
    assert response.status_code == 200 and "Enter the admin key." in response.content.decode()
    assert not ProviderAdminCredential.objects.exists()


def test_runs_cannot_be_added_or_changed_in_the_admin(admin_client):
    assert admin_client.get("/admin/llm/providerreconciliation/").status_code == 200
    assert admin_client.get("/admin/llm/providerreconciliation/add/").status_code == 403
