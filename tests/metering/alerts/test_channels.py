"""Payloads and signing, without a database: what each channel kind puts on the wire."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from django.test import override_settings

from metering.alerts import channels as ch
from metering.alerts.services import backoff_seconds

SECRET = "whsec_test-secret"


def message(**overrides) -> ch.AlertMessage:
    fields = dict(delivery_id=7, alert_id=42, tenant_slug="acme", tenant_name="Acme <Patents> & Co",
                  kind="QUOTA_WARNING", kind_label="Quota warning (80 %)", key="tenant_tokens_per_day",
                  task="LLM2_DRAFT", user=None, metric="TOKENS", window="DAY", unit="tokens", limit=1_000,
                  observed=850, period=datetime(2026, 3, 1, tzinfo=UTC),
                  created_at=datetime(2026, 3, 1, 12, 30, tzinfo=UTC))
    fields.update(overrides)
    return ch.alert_message(**fields)


def test_webhook_body_carries_the_alert_fields():
    body = json.loads(message().to_json())
    assert body["tenant"] == "acme"
    assert (body["kind"], body["key"], body["limit"], body["observed"]) == (
        "QUOTA_WARNING", "tenant_tokens_per_day", 1_000, 850)
    assert body["period"] == "2026-03-01T00:00:00+00:00"
    assert body["created_at"] == "2026-03-01T12:30:00+00:00"
    assert (body["alert_id"], body["delivery_id"], body["task"], body["percent"]) == (42, 7, "LLM2_DRAFT", 85.0)
    assert body["event"] == "quota_alert"


def test_webhook_signature_is_hmac_sha256_over_timestamp_dot_body():
    msg = message()
    body, headers = ch.webhook_request(msg, secret=SECRET, timestamp=1_700_000_000)

    assert body == msg.to_json()
    assert headers["X-Gateway-Timestamp"] == "1700000000"
    # Computed here independently from the documented scheme.
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Gateway-Signature"] == f"sha256={expected}"
    assert headers["X-Gateway-Delivery"] == "7"
    assert headers["Content-Type"] == "application/json"


def test_signature_verification_refuses_tampering_wrong_secrets_and_replays():
    now = int(time.time())
    body, headers = ch.webhook_request(message(), secret=SECRET, timestamp=now)
    signature, stamp = headers["X-Gateway-Signature"], headers["X-Gateway-Timestamp"]

    assert ch.webhook_signature_verify(secret=SECRET, timestamp=stamp, body=body, signature=signature)
    assert not ch.webhook_signature_verify(secret=SECRET, timestamp=stamp, body=body + b" ", signature=signature)
    assert not ch.webhook_signature_verify(secret="whsec_other", timestamp=stamp, body=body, signature=signature)
    assert not ch.webhook_signature_verify(secret=SECRET, timestamp=str(now + 1), body=body, signature=signature)
    assert not ch.webhook_signature_verify(secret=SECRET, timestamp=stamp, body=body, signature=signature,
                                           now=now + 301)  # too old: a replay
    assert not ch.webhook_signature_verify(secret=SECRET, timestamp="soon", body=body, signature=signature)


def test_slack_payload_has_fallback_text_and_block_kit_blocks():
    payload = ch.slack_payload(message())

    assert set(payload) == {"text", "blocks"}
    assert "tenant_tokens_per_day is over 80 %" in payload["text"]
    # Slack markup is escaped: a tenant name cannot inject <!channel> or links.
    assert "Acme &lt;Patents&gt; &amp; Co" in payload["text"] and "<Patents>" not in payload["text"]
    types = [b["type"] for b in payload["blocks"]]
    assert types == ["header", "section", "section", "context"]
    header = payload["blocks"][0]
    assert header["text"]["type"] == "plain_text" and len(header["text"]["text"]) <= 150
    fields = payload["blocks"][2]["fields"]
    assert all(f["type"] == "mrkdwn" for f in fields) and len(fields) <= 10
    assert any("850 tokens of 1,000 tokens (85.0 %)" in f["text"] for f in fields)
    json.dumps(payload)  # serialisable as is


def test_teams_payload_is_an_adaptive_card_message():
    payload = ch.teams_payload(message(user="alice"))

    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["version"] in {"1.2", "1.3", "1.4", "1.5"}
    kinds = [element["type"] for element in card["body"]]
    assert kinds == ["TextBlock", "TextBlock", "FactSet"]
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["Limit"] == "tenant_tokens_per_day" and facts["User"] == "alice"
    assert facts["Used"] == "850 tokens of 1,000 tokens (85.0 %)"
    assert not any(a.get("type") == "Action.Submit" for a in card.get("actions", []))  # unsupported by webhooks


def test_cost_alerts_are_shown_in_dollars():
    msg = message(key="tenant_cost_per_month_usd", metric="COST", unit="micro-USD", limit=250_000_000,
                  observed=200_000_000, window="MONTH")
    assert "$200.00 of $250.00 (80.0 %)" in msg.text


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", "https://", "http://user:pw@example.com/",
                                 "javascript:alert(1)"])
def test_targets_must_be_http_urls_with_a_host_and_no_credentials(url):
    with pytest.raises(ch.InvalidTarget):
        ch.target_validate(url, allow_private=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://169.254.169.254/latest",
                                 "http://localhost/x", "http://[::1]/x", "http://192.168.0.5/"])
def test_private_targets_are_refused_unless_allowed(url):
    with pytest.raises(ch.InvalidTarget):
        ch.target_validate(url, allow_private=False)
    assert ch.target_validate(url, allow_private=True) == url


def test_a_public_url_is_accepted():
    assert ch.target_validate(" https://hooks.slack.com/services/T0/B0/x ", allow_private=False) == \
        "https://hooks.slack.com/services/T0/B0/x"


@override_settings(ALERT_RETRY_BACKOFF_SECONDS=30.0, ALERT_RETRY_BACKOFF_MAX_SECONDS=600.0)
def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(n) for n in range(1, 7)] == [30, 60, 120, 240, 480, 600]
