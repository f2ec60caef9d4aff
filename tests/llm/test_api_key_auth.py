"""API keys on the metered /v1 path (issue 13 §1): the `openai` SDK with a key as its api_key (Bearer),
the Anthropic SDK's header (x-api-key), a service key acting as a named user (that user's limits apply),
a user key refusing X-Gateway-User, revocation and expiry on the next call in every process (the shared
cache), the key's tasks, model classes and own budget, and the ledger naming the key."""

from __future__ import annotations

from datetime import timedelta

import httpx2
import openai
import pytest
from django.core.cache import cache
from django.utils import timezone

from metering.models import UsageLog, UsageMeter
from metering.services import meters_reconcile, policy_rule_set
from tenants import services as tenant_services
from tenants.models import ApiKey, User
from tenants.selectors import identity_memo_clear
from tests.asgi_client import GatewayClient, SdkTransport
from tests.conftest import assert_error

TASK = "LLM2_DRAFT"
CHAT = f"/v1/{TASK}/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Describe a folding hinge"}], "max_tokens": 40}




def sdk(key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://testserver/v1/{TASK}", api_key=key, max_retries=0,
                         default_headers=headers or None, http_client=httpx2.Client(transport=SdkTransport()))


def call(key: str, *, header: str = "authorization", acting: str | None = None, path: str = CHAT, body=None):
    client = GatewayClient()
    extra = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if header == "authorization" else {"HTTP_X_API_KEY": key}
    if acting is not None:
        extra["HTTP_X_GATEWAY_USER"] = acting
    return client.post(path, body or BODY, format="json", **extra)


def service_key(persona, **options) -> str:
    return tenant_services.api_key_create(tenant=persona.tenant, name="batch", **options).secret


def test_the_openai_sdk_with_a_service_key_is_metered_under_the_key(tenant_admin):
    key = service_key(tenant_admin)
    completion = sdk(key).chat.completions.create(model="auto", messages=BODY["messages"], max_tokens=40)
    assert completion.choices[0].message.content
    log = UsageLog.objects.get()
    row = ApiKey.objects.get()
    assert log.api_key_id == row.pk and log.status == UsageLog.Status.SUCCESS
    assert log.tokens_in == completion.usage.prompt_tokens and log.tokens_out == completion.usage.completion_tokens
    assert log.user.role == User.Role.SERVICE  # acting as the tenant's service
    assert meters_reconcile() == []
    # The usage API shows and filters by the key.
    response = tenant_admin.client.get(f"/api/usage/logs/?key={row.pk}")
    assert response.status_code == 200, response.content
    logs = response.json()
    assert [r["api_key"] for r in logs["results"]] == [row.prefix]
    assert tenant_admin.client.get("/api/usage/logs/?key=999999").json()["results"] == []


def test_x_api_key_as_the_anthropic_sdk_sends_it(tenant_admin, member):
    key = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="mine", user=member.user).secret
    response = call(key, header="x-api-key")
    assert response.status_code == 200, response.content
    assert UsageLog.objects.get().user_id == member.user.pk  # a user key acts as its user
    models = GatewayClient().get(f"/v1/{TASK}/models", HTTP_X_API_KEY=key)
    assert models.status_code == 200 and models.json()["data"]


def test_a_service_key_acts_as_the_named_user_and_that_users_limits_apply(tenant_admin, member):
    key = service_key(tenant_admin)
    policy_rule_set(scope="USER", user=member.user, key="user_tokens_per_day", value=5)
    assert_error(call(key, acting=member.user.username), 429, "quota_exceeded")
    assert UsageLog.objects.get().user_id == member.user.pk  # the refusal is the member's, made with the key
    assert call(key).status_code == 200  # the service account has no such limit
    assert call(key, acting=tenant_admin.user.username).status_code == 200
    assert_error(call(key, acting="no-such-user"), 403, "acting_user_invalid")


def test_a_user_key_or_a_jwt_cannot_name_another_user(tenant_admin, member):
    key = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="mine", user=member.user).secret
    assert_error(call(key, acting=tenant_admin.user.username), 403, "acting_user_not_allowed")
    jwt = tenant_admin.client  # the persona's client sends its JWT
    assert_error(jwt.post(CHAT, BODY, format="json", HTTP_X_GATEWAY_USER=member.user.username), 403,
                 "acting_user_not_allowed")
    assert not UsageLog.objects.exists()


def test_revoking_stops_the_next_call_in_every_process(tenant_admin, django_capture_on_commit_callbacks):
    issued = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="batch")
    client = sdk(issued.secret)
    client.chat.completions.create(model="auto", messages=BODY["messages"], max_tokens=20)
    identity_memo_clear()  # the next call is another worker's: only the shared cache knows the key
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.api_key_revoke(api_key=issued.api_key)
    with pytest.raises(openai.AuthenticationError) as error:
        client.chat.completions.create(model="auto", messages=BODY["messages"], max_tokens=20)
    assert error.value.status_code == 401 and "revoked" in str(error.value)
    assert UsageLog.objects.count() == 1


def test_an_expired_key_is_refused(tenant_admin):
    issued = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="old",
                                            expires_at=timezone.now() + timedelta(minutes=1))
    ApiKey.objects.filter(pk=issued.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    cache.clear()
    assert_error(call(issued.secret), 401, "api_key_expired")
    assert not UsageLog.objects.exists()


def test_the_keys_tasks_and_model_classes_narrow_what_it_may_call(tenant_admin):
    key = service_key(tenant_admin, allowed_tasks=["LLM1_PRIOR_ART"])
    refused = assert_error(call(key), 403, "task_not_allowed_for_key")
    assert "LLM1_PRIOR_ART" in refused["error"]["message"]
    assert UsageLog.objects.get().api_key_id is not None  # the refusal is in the ledger, under the key
    narrow = service_key(tenant_admin, allowed_model_classes=["PRO_M"])
    assert_error(call(narrow, body={**BODY, "model": "PRO_L"}), 403, "model_class_not_allowed")
    assert call(narrow, body={**BODY, "model": "PRO_M"}).status_code == 200


def test_the_keys_own_budget_is_enforced_on_v1(tenant_admin):
    key = service_key(tenant_admin, limits={"key_tokens_per_day": 10})
    response = call(key)
    assert_error(response, 429, "quota_exceeded")
    assert "key_tokens_per_day" in response.json()["error"]["message"]
    assert UsageMeter.objects.filter(api_key__isnull=False, reserved=0, used=0).count() == 1
    assert call(service_key(tenant_admin)).status_code == 200  # another key of the tenant is not limited by it


# --- real worker processes on PostgreSQL --------------------------------------------------------------


@pytest.mark.postgres
def test_a_key_budget_holds_under_a_parallel_race_and_revocation_reaches_every_worker(transactional_db,
                                                                                    tenant_admin):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    import httpx
    from django.db.models import F, Sum

    from catalog.models import Task
    from llm.tokenizer import messages_tokens
    from tests.conftest import require_postgres
    from tests.integration.gateway_server import gateway_server

    require_postgres()
    messages = [{"role": "user", "content": "A hinge with a self-locking detent for folding patent drawings."}]
    per_call = messages_tokens(messages) + 10  # the offline answer always reaches max_tokens=10
    n = 4
    policy_rule_set(scope="TENANT", tenant=tenant_admin.tenant, task=Task.objects.get(code=TASK),
                    key="max_concurrent", value=1000)
    issued = tenant_services.api_key_create(tenant=tenant_admin.tenant, name="race",
                                            limits={"key_tokens_per_day": n * per_call})
    body = {"model": "auto", "messages": messages, "max_tokens": 10}

    def post(base: str, header: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {issued.secret}"} if header == "bearer" else {"x-api-key": issued.secret}
        return httpx.post(f"{base}{CHAT}", json=body, headers=headers, timeout=30)

    with gateway_server(workers=2, CELERY_TASK_ALWAYS_EAGER="true") as server:
        barrier = Barrier(4 * n)

        def one(i: int) -> httpx.Response:
            barrier.wait()  # every request at the same instant
            return post(server.url, "bearer" if i % 2 else "x-api-key")

        with ThreadPoolExecutor(max_workers=4 * n) as pool:
            responses = list(pool.map(one, range(4 * n)))
        codes = [r.status_code for r in responses]
        assert codes.count(200) == n and codes.count(429) == 3 * n, codes
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"quota_exceeded"}

        tenant_services.api_key_revoke(api_key=issued.api_key)  # commits: every worker's next call is refused
        after = [post(server.url, "bearer") for _ in range(4)]
        assert [r.status_code for r in after] == [401] * 4
        assert {r.json()["error"]["code"] for r in after} == {"api_key_revoked"}

    own = UsageMeter.objects.get(api_key=issued.api_key, metric="TOKENS", window="DAY")
    ledger = UsageLog.objects.filter(api_key=issued.api_key, status="SUCCESS").aggregate(
        t=Sum(F("tokens_in") + F("tokens_out")))["t"]
    assert own.used == ledger == n * per_call and own.reserved == 0
    assert UsageLog.objects.filter(api_key=issued.api_key, status="REFUSED").count() == 3 * n
    assert meters_reconcile() == []
