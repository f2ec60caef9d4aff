import pytest

from metering.models import UsageLog, UsageMeter
from metering.services import meters_reconcile

pytestmark = pytest.mark.django_db(transaction=True)


def test_chat_completion_is_metered(tenant_admin):
    body = {"model": "auto", "messages": [{"role": "user", "content": "Describe a widget"}], "max_tokens": 100}
    r = tenant_admin.client.post("/v1/LLM2_DRAFT/chat/completions", body, format="json")
    assert r.status_code == 200, r.content
    data = r.json()
    print(data, dict(r.headers))
    log = UsageLog.objects.get()
    assert log.tokens_out == data["usage"]["completion_tokens"]
    assert meters_reconcile() == []
    print(list(UsageMeter.objects.values("metric", "window", "used", "reserved", "task_id")))
