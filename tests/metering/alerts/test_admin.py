"""Django Admin for alert channels, the delivery log and digests."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from metering.alerts import services as alert_services
from metering.alerts.crypto import secret_decrypt
from metering.alerts.models import AlertChannel, AlertDelivery, UsageDigest
from metering.alerts.tasks import alert_notify
from tests.metering.alerts.conftest import make_alert

pytestmark = pytest.mark.django_db(transaction=True)


def url(model, view: str, *args) -> str:
    return reverse(f"admin:metering_{model._meta.model_name}_{view}", args=args)


def test_alert_admin_pages_load(admin_client, tenant_admin, receiver_factory):
    receiver = receiver_factory(statuses=[500])
    channel, _ = alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="WEBHOOK", name="ops",
                                                     target=receiver.url)
    alert_notify.delay(make_alert(tenant_admin.tenant).pk)
    UsageDigest.objects.create(tenant=tenant_admin.tenant, day="2026-03-01", status="SENT", recipients=1)
    delivery = AlertDelivery.objects.get()

    for page in (url(AlertChannel, "changelist"), url(AlertChannel, "add"), url(AlertChannel, "change", channel.pk),
                 url(AlertDelivery, "changelist"), url(AlertDelivery, "change", delivery.pk),
                 url(UsageDigest, "changelist")):
        response = admin_client.get(page)
        assert response.status_code == 200, (page, response.status_code)
    assert admin_client.get(url(AlertChannel, "changelist"), {"q": tenant_admin.tenant.slug}).status_code == 200
    # The secret is never on a page.
    page = admin_client.get(url(AlertChannel, "change", channel.pk)).content.decode()
    assert secret_decrypt(AlertChannel.objects.get(pk=channel.pk).secret_encrypted) not in page
    assert "set (encrypted" in page


def test_adding_a_webhook_in_the_admin_validates_and_shows_the_secret_once(admin_client, tenant_admin):
    bad = admin_client.post(url(AlertChannel, "add"), {"tenant": tenant_admin.tenant.pk, "kind": "WEBHOOK",
                                                       "name": "ops", "target": "ftp://example.com/x",
                                                       "is_active": "on"})
    assert bad.status_code == 200 and "http:// or https://" in bad.content.decode()
    assert not AlertChannel.objects.exists()

    good = admin_client.post(url(AlertChannel, "add"), {"tenant": tenant_admin.tenant.pk, "kind": "WEBHOOK",
                                                        "name": "ops", "target": "https://example.com/hook",
                                                        "is_active": "on"})
    assert good.status_code == 302
    channel = AlertChannel.objects.get()
    secret = secret_decrypt(channel.secret_encrypted)
    assert any(secret in str(m) for m in get_messages(good.wsgi_request))


def test_retry_now_requeues_a_dead_delivery(admin_client, tenant_admin, receiver_factory, settings):
    settings.ALERT_DELIVERY_MAX_ATTEMPTS = 1
    receiver = receiver_factory(statuses=[500])  # then 200
    alert_services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="WEBHOOK", name="ops",
                                        target=receiver.url)
    alert_notify.delay(make_alert(tenant_admin.tenant).pk)
    delivery = AlertDelivery.objects.get()
    assert delivery.status == "DEAD"

    response = admin_client.post(url(AlertDelivery, "changelist"),
                                 {"action": "retry_now", "_selected_action": [delivery.pk]})

    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == "SENT" and len(receiver.requests) == 2
