"""Shared fixtures: the seeded catalog and personas (a tenant admin, a member, an outsider)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from tenants import services as tenant_services
from tenants.models import Tenant, User
from tenants.tokens import tokens_for_user
from tests.asgi_client import GatewayClient

PASSWORD = "correct-horse-battery-staple-42"


def _services() -> dict[str, bool]:
    database = os.environ.get("DATABASE_URL", "")
    return {"postgres": database.startswith(("postgres://", "postgresql://")),
            "redis": bool(os.environ.get("REDIS_URL"))}


def _sqlite_leg() -> bool:
    """CI's first leg: the suite on the embedded default (SQLite, no Redis), as `make run` ships it.
    Tests marked `postgres` or `redis` run in the second leg, on PostgreSQL + Redis."""
    return bool(os.environ.get("CI")) and os.environ.get("GATEWAY_TEST_LEG") == "sqlite"


def pytest_collection_modifyitems(config, items):
    available = _services()
    if os.environ.get("CI") and not _sqlite_leg() and not all(available.values()):
        # In CI every service is there: a test that would skip for want of one must fail instead.
        raise pytest.UsageError("CI must set DATABASE_URL and REDIS_URL so that no test skips.")
    kept, deselected = [], []
    for item in items:
        if "tests/integration/" in item.nodeid:
            item.add_marker(pytest.mark.postgres)  # real uvicorn workers on one shared database
        missing = [name for name in ("postgres", "redis") if item.get_closest_marker(name) and not available[name]]
        if not missing:
            kept.append(item)
        elif _sqlite_leg():
            deselected.append(item)  # not skipped: the PostgreSQL + Redis leg runs it
        else:
            item.add_marker(pytest.mark.skip(reason=f"needs {' and '.join(missing)}: set DATABASE_URL / REDIS_URL "
                                                    "(CI does)"))
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def require_postgres(needs: str = "PostgreSQL") -> None:
    """Skip a PostgreSQL-only test on SQLite, but fail it in CI, where every service is there.
    Mark such tests `@pytest.mark.postgres` too: CI's SQLite leg leaves them to the other leg."""
    if connection.vendor != "postgresql":
        if os.environ.get("CI"):
            pytest.fail(f"CI runs this on PostgreSQL (set DATABASE_URL): it needs {needs}. "
                        "Mark it @pytest.mark.postgres so that the SQLite leg leaves it to the PostgreSQL leg.")
        pytest.skip(f"needs {needs}: set DATABASE_URL (CI does)")


@pytest.fixture(scope="session", autouse=True)
def _private_file_cache(tmp_path_factory):
    """Without Redis, each test run gets its own file cache so parallel runs never share state."""
    # A fast hasher: the suite creates many users and PBKDF2 would dominate its run time.
    fast = {"PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
            # In-process test requests must see the test's own (uncommitted) transaction; the
            # integration tests' uvicorn workers run with the production default.
            "DB_STEPS_THREAD_SENSITIVE": True,
            # Tests that set meters directly expect the next evaluation to see them; the usage
            # snapshot itself is tested with its own setting (tests/metering/test_policy.py).
            "POLICY_USAGE_CACHE_SECONDS": 0}
    if os.environ.get("REDIS_URL"):
        with override_settings(**fast):
            yield
        return
    location = tmp_path_factory.mktemp("cache")
    caches = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(location)}}
    with override_settings(CACHES=caches, **fast):
        yield


@pytest.fixture(scope="session", autouse=True)
def _celery_eager():
    """Tasks run inline in tests; the Celery integration tests start a real worker themselves."""
    from gateway_project.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _clear_cache(_private_file_cache):
    from catalog.selectors import catalog_cache
    from llm import router
    from llm.providers import registry
    from metering.policy import policy_cache, usage_snapshot_clear

    def forget_local() -> None:
        for memo in (catalog_cache, policy_cache):
            memo.clear_local()
        registry.clear_local()
        router.clear_local()
        usage_snapshot_clear()

    forget_local()
    cache.clear()
    yield
    cache.clear()
    forget_local()


@pytest.fixture
def catalog(db):
    call_command("seed_catalog", verbosity=0)


@dataclass
class Persona:
    user: User
    tenant: Tenant | None

    @property
    def client(self) -> APIClient:
        """The persona's API client: `/v1/` requests go through `gateway_project.asgi.application`, the
        pure-ASGI fast path uvicorn serves them by (tests/asgi_client.py); the rest through Django."""
        return self._signed_in(GatewayClient())

    @property
    def django_client(self) -> APIClient:
        """Django's test client only: `/v1/` requests reach the Django views, not the fast path."""
        return self._signed_in(APIClient())

    def _signed_in(self, client: APIClient) -> APIClient:
        if self.user.tenant_id is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens_for_user(self.user)['access']}")
        return client


def make_tenant(name: str, admin_username: str, plan: str = "PRO") -> tuple[Tenant, User]:
    issued = tenant_services.ati_token_issue(plan_code=plan)
    return tenant_services.tenant_signup(
        ati_secret=issued.secret, tenant_name=name, username=admin_username,
        email=f"{admin_username}@example.com", password=PASSWORD,
    )


@pytest.fixture
def tenant_admin(catalog) -> Persona:
    tenant, admin = make_tenant("Acme Patents", "acme-admin")
    return Persona(user=admin, tenant=tenant)


@pytest.fixture
def member(tenant_admin) -> Persona:
    user = tenant_services.user_create(
        tenant=tenant_admin.tenant, username="acme-member", email="member@example.com", password=PASSWORD
    )
    return Persona(user=user, tenant=tenant_admin.tenant)


@pytest.fixture
def outsider(catalog) -> Persona:
    tenant, admin = make_tenant("Globex IP", "globex-admin")
    return Persona(user=admin, tenant=tenant)


@pytest.fixture
def fakes(settings, tenant_admin):
    """The four real providers behind the gateway, each its loopback fake reached through its own SDK
    (OpenAI, Grok on a second OpenAI fake, Gemini, Anthropic). Modules that need another set (wrong
    keys, no offline models) define their own `fakes`."""
    from llm.providers import registry
    from metering.services import policy_rule_set
    from tests.fakes import FakeAnthropic, FakeGemini, FakeOpenAI

    servers = {"openai": FakeOpenAI(), "grok": FakeOpenAI(), "gemini": FakeGemini(), "anthropic": FakeAnthropic()}
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "test-key", servers["openai"].url + "/v1"
    settings.GROK_API_KEY, settings.GROK_BASE_URL = "test-key", servers["grok"].url + "/v1"
    settings.GOOGLE_AI_API_KEY, settings.GEMINI_BASE_URL = "test-key", servers["gemini"].url
    settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL = "test-key", servers["anthropic"].url
    settings.PROVIDER_TIMEOUT_SECONDS = 5
    settings.ROUTER_BACKOFF_BASE_SECONDS = 0
    registry.clear_local()
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, key="max_concurrent", value=100)
    yield servers
    registry.clear_local()
    for server in servers.values():
        server.close()


def assert_error(response, status: int, code: str) -> dict:
    """Every failure uses the one error shape."""
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"] and body["error"]["type"], body
    return body
