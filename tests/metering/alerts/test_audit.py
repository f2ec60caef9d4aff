"""Every alert-channel write is in the audit log -- over the API (the tenant admin), in the Django Admin
(the super admin) and when the gateway disables a failing channel -- and no event holds a secret."""

from __future__ import annotations

from django.urls import reverse

from metering.alerts import services
from metering.alerts.models import AlertChannel
from tenants.audit import AuditEvent

CHANNELS = "/api/alert-channels/"


def trail(channel_id) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(object_type="alert_channel", object_id=str(channel_id)).order_by("id"))


def test_api_channel_writes_are_audited_without_the_secret(tenant_admin):
    client = tenant_admin.client
    created = client.post(CHANNELS, {"kind": "WEBHOOK", "name": "ops", "target": "https://example.com/hook"},
                          format="json")
    assert created.status_code == 201, created.content
    channel_id, secret = created.json()["id"], created.json()["secret"]
    assert client.patch(f"{CHANNELS}{channel_id}/", {"name": "ops-2"}, format="json").status_code == 200
    assert client.patch(f"{CHANNELS}{channel_id}/", {"is_active": False}, format="json").status_code == 200
    rotated = client.post(f"{CHANNELS}{channel_id}/rotate-secret/")
    assert rotated.status_code == 200
    assert client.delete(f"{CHANNELS}{channel_id}/").status_code == 204

    events = trail(channel_id)
    assert [e.action for e in events] == ["alert_channel.create", "alert_channel.update", "alert_channel.deactivate",
                                          "alert_channel.secret_rotate", "alert_channel.delete"]
    assert all(e.actor == tenant_admin.user and e.source == "API" and e.tenant_id == tenant_admin.tenant.pk
               for e in events)
    assert (events[1].before, events[1].after) == ({"name": "ops"}, {"name": "ops-2"})
    assert events[0].after["signed"] is True
    everything = " ".join(str((e.before, e.after)) for e in events)
    assert secret not in everything and rotated.json()["secret"] not in everything


def test_admin_channel_writes_are_audited_as_the_super_admin(admin_client, admin_user, tenant_admin):
    response = admin_client.post(reverse("admin:metering_alertchannel_add"),
                                 {"tenant": tenant_admin.tenant.pk, "kind": "EMAIL", "name": "admins", "target": "",
                                  "is_active": "on"})
    assert response.status_code == 302
    channel = AlertChannel.objects.get(tenant=tenant_admin.tenant, name="admins")
    response = admin_client.post(reverse("admin:metering_alertchannel_changelist"),
                                 {"action": "disable_channels", "_selected_action": [channel.pk]})
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.is_active is False and channel.disabled_reason == "Disabled by a super admin."
    events = trail(channel.pk)
    assert [e.action for e in events] == ["alert_channel.create", "alert_channel.deactivate"]
    assert all(e.actor == admin_user and e.source == "ADMIN" for e in events)


def test_a_channel_the_gateway_disables_is_audited_as_the_system(tenant_admin):
    channel, _ = services.alert_channel_create(tenant_id=tenant_admin.tenant.pk, kind="SLACK", name="slack",
                                               target="https://hooks.slack.com/services/T0/B0/abcdefghijklmnop")
    from django.utils import timezone

    services._channel_disable(channel_id=channel.pk, failures=5, last_error="HTTP 500", now=timezone.now())
    [disabled] = [e for e in trail(channel.pk) if e.action == "alert_channel.disable"]
    assert disabled.actor is None and disabled.source == "COMMAND" and "HTTP 500" in disabled.after["reason"]
