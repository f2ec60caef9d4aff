"""Console fixtures: a super admin, a read-only staff member, and session clients for every persona."""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.models import User

CONSOLE_PAGES = [
    "/console/",
    "/console/tenants/",
    "/console/tenants/{slug}/",
    "/console/providers/",
    "/console/overrides/",
    "/console/plan-changes/",
    "/console/plans/",
    "/console/quota-requests/",
    "/console/audit/",
    "/console/reports/",
    "/console/rollout/",
    "/console/reconciliation/",
]


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser(username="root-admin", email="root@example.com", password="x-Very-long-42")


@pytest.fixture
def su_client(superuser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def staff_client(db) -> Client:
    staff = User.objects.create_user(username="ops-staff", password="x-Very-long-42", is_staff=True)
    client = Client()
    client.force_login(staff)
    return client


def session_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []
