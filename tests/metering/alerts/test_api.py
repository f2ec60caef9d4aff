"""/api/notifications/ and /api/alert-channels/: who may do what, validation, secrets shown once."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from metering.alerts.crypto import secret_decrypt
from metering.alerts.models import AlertChannel, AlertDelivery, Notification
from metering.alerts.tasks import alert_notify
from tests.conftest import assert_error
from tests.metering.alerts.conftest import make_alert

pytestmark = pytest.mark.django_db(transaction=True)

CHANNELS = "/api/alert-channels/"
SLACK_URL = "https://hooks.slack.com/services/T0000/B0000/abcdefghijklmnopqrstuvwx"


def create(persona, **body):
    return persona.client.post(CHANNELS, body, format="json")


def a_webhook(persona, url: str = "https://example.com/hooks/gateway", name: str = "ops") -> dict:
    r = create(persona, kind="WEBHOOK", name=name, target=url)
    assert r.status_code == 201, r.content
    return r.json()


# --- permissions ----------------------------------------------------------------------------------


def test_members_may_not_manage_channels(tenant_admin, member):
    channel = a_webhook(tenant_admin)
    url = f"{CHANNELS}{channel['id']}/"

    assert_error(member.client.get(CHANNELS), 403, "forbidden")
    assert_error(create(member, kind="EMAIL", name="mine"), 403, "forbidden")
    assert_error(member.client.get(url), 403, "forbidden")
    assert_error(member.client.patch(url, {"is_active": False}, format="json"), 403, "forbidden")
    assert_error(member.client.delete(url), 403, "forbidden")
    assert_error(member.client.get(url + "deliveries/"), 403, "forbidden")
    assert_error(member.client.post(url + "rotate-secret/"), 403, "forbidden")
    assert AlertChannel.objects.get(pk=channel["id"]).is_active


def test_another_tenant_s_channel_is_not_found(tenant_admin, outsider):
    channel = a_webhook(tenant_admin)
    url = f"{CHANNELS}{channel['id']}/"

    assert_error(outsider.client.get(url), 404, "alert_channel_not_found")
    assert_error(outsider.client.patch(url, {"name": "mine now"}, format="json"), 404, "alert_channel_not_found")
    assert_error(outsider.client.delete(url), 404, "alert_channel_not_found")
    assert_error(outsider.client.get(url + "deliveries/"), 404, "alert_channel_not_found")
    assert_error(outsider.client.post(url + "rotate-secret/"), 404, "alert_channel_not_found")
    assert outsider.client.get(CHANNELS).json()["results"] == []
    assert AlertChannel.objects.get(pk=channel["id"]).name == "ops"


def test_anonymous_callers_are_refused(tenant_admin):
    for path in (CHANNELS, "/api/notifications/"):
        assert APIClient().get(path).status_code == 401


# --- channels -------------------------------------------------------------------------------------


def test_a_webhook_secret_is_returned_once_and_stored_encrypted(tenant_admin):
    created = a_webhook(tenant_admin)
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30 and created["has_secret"] is True

    listed = tenant_admin.client.get(CHANNELS).json()["results"]
    detail = tenant_admin.client.get(f"{CHANNELS}{created['id']}/").json()
    patched = tenant_admin.client.patch(f"{CHANNELS}{created['id']}/", {"name": "ops 2"}, format="json").json()
    for body in (listed[0], detail, patched):
        assert "secret" not in body and body["has_secret"] is True
        assert secret not in str(body)
    stored = AlertChannel.objects.get(pk=created["id"]).secret_encrypted
    assert secret not in stored and secret_decrypt(stored) == secret

    rotated = tenant_admin.client.post(f"{CHANNELS}{created['id']}/rotate-secret/").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
    assert secret_decrypt(AlertChannel.objects.get(pk=created["id"]).secret_encrypted) == rotated["secret"]
    assert "secret" not in tenant_admin.client.get(f"{CHANNELS}{created['id']}/").json()


def test_only_webhooks_have_secrets(tenant_admin):
    email = create(tenant_admin, kind="EMAIL", name="mail").json()
    assert "secret" not in email and email["has_secret"] is False and email["target"] == ""
    assert_error(tenant_admin.client.post(f"{CHANNELS}{email['id']}/rotate-secret/"), 400, "no_secret")


def test_slack_urls_are_masked_after_creation(tenant_admin):
    created = create(tenant_admin, kind="SLACK", name="slack", target=SLACK_URL).json()
    assert created["target"] == SLACK_URL

    shown = tenant_admin.client.get(f"{CHANNELS}{created['id']}/").json()["target"]
    assert shown == "https://hooks.slack.com/…uvwx"


@pytest.mark.parametrize(("body", "code"), [
    ({"kind": "WEBHOOK", "name": "x"}, "invalid_target"),
    ({"kind": "WEBHOOK", "name": "x", "target": ""}, "invalid_target"),
    ({"kind": "SLACK", "name": "x", "target": "ftp://hooks.slack.com/x"}, "invalid_target"),
    ({"kind": "TEAMS", "name": "x", "target": "not a url"}, "invalid_target"),
    ({"kind": "EMAIL", "name": "x", "target": "https://example.com/"}, "invalid_target"),
    ({"kind": "IN_APP", "name": "x", "target": "https://example.com/"}, "invalid_target"),
    ({"kind": "PIGEON", "name": "x"}, "validation_error"),
    ({"kind": "EMAIL", "name": "  "}, "validation_error"),
])
def test_channel_validation(tenant_admin, body, code):
    assert_error(create(tenant_admin, **body), 400, code)
    assert not AlertChannel.objects.exists()


def test_private_webhook_targets_are_refused_when_not_allowed(tenant_admin, settings):
    settings.ALERT_ALLOW_PRIVATE_TARGETS = False
    assert_error(create(tenant_admin, kind="WEBHOOK", name="x", target="http://169.254.169.254/latest"), 400,
                 "invalid_target")


def test_channel_names_are_unique_per_tenant(tenant_admin, outsider):
    a_webhook(tenant_admin, name="ops")
    assert_error(create(tenant_admin, kind="EMAIL", name="ops"), 409, "alert_channel_exists")
    assert create(outsider, kind="EMAIL", name="ops").status_code == 201


def test_patch_validates_and_re_enabling_clears_the_failures(tenant_admin):
    created = a_webhook(tenant_admin)
    url = f"{CHANNELS}{created['id']}/"
    AlertChannel.objects.filter(pk=created["id"]).update(is_active=False, consecutive_failures=5,
                                                         disabled_reason="Disabled after 5 consecutive failed")

    assert_error(tenant_admin.client.patch(url, {"target": "gopher://x"}, format="json"), 400, "invalid_target")
    assert_error(tenant_admin.client.patch(url, {"target": ""}, format="json"), 400, "invalid_target")
    r = tenant_admin.client.patch(url, {"is_active": True, "target": "https://example.org/new"}, format="json")

    assert r.status_code == 200, r.content
    body = r.json()
    assert (body["is_active"], body["consecutive_failures"], body["disabled_reason"], body["target"]) == (
        True, 0, "", "https://example.org/new")

    off = tenant_admin.client.patch(url, {"is_active": False}, format="json").json()
    assert off["is_active"] is False and off["disabled_reason"] == "Deactivated by a tenant admin."


def test_delete_removes_the_channel(tenant_admin):
    created = a_webhook(tenant_admin)
    url = f"{CHANNELS}{created['id']}/"

    assert tenant_admin.client.delete(url).status_code == 204
    assert_error(tenant_admin.client.get(url), 404, "alert_channel_not_found")


def test_the_delivery_log_of_a_channel(tenant_admin, receiver_factory):
    receiver = receiver_factory(statuses=[500])
    created = a_webhook(tenant_admin, url=receiver.url)
    other = create(tenant_admin, kind="IN_APP", name="bell").json()
    alert = make_alert(tenant_admin.tenant)
    alert_notify.delay(alert.pk)

    r = tenant_admin.client.get(f"{CHANNELS}{created['id']}/deliveries/")

    assert r.status_code == 200, r.content
    body = r.json()
    assert body["count"] == 1 and {"next", "previous", "results"} <= set(body)
    (row,) = body["results"]
    assert (row["alert"], row["alert_kind"], row["policy_key"], row["kind"]) == (
        alert.pk, "QUOTA_WARNING", "tenant_tokens_per_day", "WEBHOOK")
    assert (row["status"], row["attempts"], row["response_status"]) == ("FAILED", 1, 500)
    assert row["last_error"].startswith("HTTP 500") and row["next_attempt_at"]
    in_app = tenant_admin.client.get(f"{CHANNELS}{other['id']}/deliveries/").json()["results"]
    assert [d["status"] for d in in_app] == ["SENT"]
    assert AlertDelivery.objects.count() == 2
    assert tenant_admin.client.get(f"{CHANNELS}{created['id']}/").json()["consecutive_failures"] == 1


# --- notifications --------------------------------------------------------------------------------


def notify(persona, title: str, read: bool = False) -> Notification:
    from django.utils import timezone

    return Notification.objects.create(tenant=persona.tenant, user=persona.user, kind="TEST", title=title,
                                       read_at=timezone.now() if read else None)


def test_notifications_list_only_the_caller_s_own(tenant_admin, member, outsider):
    mine = [notify(tenant_admin, f"n{i}") for i in range(3)]
    notify(member, "the member's")
    notify(outsider, "another tenant's")

    r = tenant_admin.client.get("/api/notifications/")

    assert r.status_code == 200, r.content
    body = r.json()
    assert body["count"] == 3 and body["next"] is None
    assert [n["id"] for n in body["results"]] == [n.pk for n in reversed(mine)]  # newest first
    assert set(body["results"][0]) == {"id", "kind", "title", "body", "alert", "created_at", "read_at", "is_read"}
    assert [n["title"] for n in member.client.get("/api/notifications/").json()["results"]] == ["the member's"]


def test_notifications_are_paginated(tenant_admin):
    Notification.objects.bulk_create([Notification(tenant=tenant_admin.tenant, user=tenant_admin.user, kind="T",
                                                    title=f"n{i}") for i in range(55)])
    first = tenant_admin.client.get("/api/notifications/").json()
    second = tenant_admin.client.get("/api/notifications/?page=2").json()

    assert first["count"] == 55 and len(first["results"]) == 50 and first["next"]
    assert len(second["results"]) == 5 and second["next"] is None


def test_unread_filter_and_marking_read(tenant_admin, member):
    unread = notify(tenant_admin, "unread")
    notify(tenant_admin, "read", read=True)
    theirs = notify(member, "the member's")

    assert [n["title"] for n in tenant_admin.client.get("/api/notifications/?unread=1").json()["results"]] == [
        "unread"]
    r = tenant_admin.client.post(f"/api/notifications/{unread.pk}/read/")
    assert r.status_code == 200 and r.json()["is_read"] is True and r.json()["read_at"]
    assert tenant_admin.client.get("/api/notifications/?unread=1").json()["count"] == 0
    # Marking again keeps the first read time.
    first_read = r.json()["read_at"]
    assert tenant_admin.client.post(f"/api/notifications/{unread.pk}/read/").json()["read_at"] == first_read

    assert_error(tenant_admin.client.post(f"/api/notifications/{theirs.pk}/read/"), 404, "notification_not_found")
    theirs.refresh_from_db()
    assert theirs.read_at is None


def test_read_all_marks_only_the_caller_s(tenant_admin, member):
    for i in range(3):
        notify(tenant_admin, f"n{i}")
    notify(tenant_admin, "old", read=True)
    theirs = notify(member, "the member's")

    r = tenant_admin.client.post("/api/notifications/read-all/")

    assert r.status_code == 200 and r.json() == {"marked_read": 3}
    assert not Notification.objects.filter(user=tenant_admin.user, read_at__isnull=True).exists()
    theirs.refresh_from_db()
    assert theirs.read_at is None
