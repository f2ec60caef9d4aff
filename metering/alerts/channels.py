"""What each channel kind sends, and how: pure payload builders plus the two transports (HTTP, email).

Nothing here touches the database; `metering.alerts.services` loads the rows, claims the delivery and
records the outcome. Every send either returns a `SendResult` or raises `DeliveryError`.

Webhook signature (documented for receivers in README.md here):
    X-Gateway-Timestamp: <unix seconds>
    X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import send_mail

USER_AGENT = "LLM-Service-Gateway-Alerts/1.0"
SIGNATURE_HEADER = "X-Gateway-Signature"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"
DELIVERY_HEADER = "X-Gateway-Delivery"
EVENT_HEADER = "X-Gateway-Event"
EVENT = "quota_alert"


class DeliveryError(Exception):
    """A send failed; the delivery is retried with backoff (and counts towards disabling the channel)."""

    def __init__(self, message: str, *, response_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.response_status = response_status


class InvalidTarget(ValueError):
    """A channel target that may not be used (bad scheme, no host, a private address when refused)."""


@dataclass(frozen=True)
class SendResult:
    response_status: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class AlertMessage:
    """Everything a channel says about one alert. `to_json()` is the webhook body."""

    event: str
    delivery_id: int
    alert_id: int
    tenant: str  # the tenant's slug
    tenant_name: str
    kind: str  # QUOTA_WARNING | QUOTA_EXCEEDED | CONCURRENCY_LIMIT
    kind_label: str
    key: str  # the policy key, e.g. tenant_tokens_per_day
    task: str | None  # None = all tasks together
    user: str | None  # a user-level limit's user
    metric: str
    window: str
    unit: str
    limit: int
    observed: int
    percent: float
    period: str  # ISO start of the meter period
    created_at: str
    title: str
    text: str

    def to_json(self) -> bytes:
        # Canonical bytes: the exact bytes that are signed are the bytes that are sent.
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _amount(value: int, unit: str) -> str:
    if unit == "micro-USD":
        return f"${value / 1_000_000:,.2f}"
    return f"{value:,} {unit}"


def alert_message(*, delivery_id: int, alert_id: int, tenant_slug: str, tenant_name: str, kind: str, kind_label: str,
                  key: str, task: str | None, user: str | None, metric: str, window: str, unit: str, limit: int,
                  observed: int, period: datetime, created_at: datetime) -> AlertMessage:
    percent = round(observed * 100 / limit, 1) if limit else 100.0
    scope = f"task {task}" if task else "all tasks"
    if user:
        scope += f", user {user}"
    headline = {
        "QUOTA_WARNING": f"{key} is over 80 %",
        "QUOTA_EXCEEDED": f"{key} is used up",
        "CONCURRENCY_LIMIT": f"{key} is at 90 % of its slots",
    }.get(kind, f"{key}: {kind_label}")
    title = f"[{tenant_name}] {headline} ({scope})"
    text = (f"{tenant_name}: {headline} ({scope}). {_amount(observed, unit)} of {_amount(limit, unit)} "
            f"({percent} %) in the {window.lower()} period starting {period.isoformat()}.")
    return AlertMessage(
        event=EVENT, delivery_id=delivery_id, alert_id=alert_id, tenant=tenant_slug, tenant_name=tenant_name,
        kind=kind, kind_label=kind_label, key=key, task=task, user=user, metric=metric, window=window, unit=unit,
        limit=limit, observed=observed, percent=percent, period=period.isoformat(),
        created_at=created_at.isoformat(), title=title, text=text,
    )


# ------------------------------------------------------------------------------------------ webhook

def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_signature_verify(*, secret: str, timestamp: str, body: bytes, signature: str,
                             tolerance_seconds: int = 300, now: float | None = None) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps (replays)."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except (TypeError, ValueError):
        return False
    if age > tolerance_seconds:
        return False
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), signature)


def webhook_request(message: AlertMessage, *, secret: str, timestamp: int | None = None) -> tuple[bytes, dict]:
    """The body and headers of one webhook attempt (each attempt is signed with a fresh timestamp)."""
    body = message.to_json()
    stamp = str(int(timestamp if timestamp is not None else time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: webhook_signature(secret, stamp, body),
        DELIVERY_HEADER: str(message.delivery_id),  # receivers deduplicate on it
        EVENT_HEADER: message.event,
    }
    return body, headers


# ------------------------------------------------------------------------------------------ Slack

def _slack_escape(text: str) -> str:
    # Slack reads &, < and > as markup (<!channel> would ping everyone).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(message: AlertMessage) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` is the notification fallback, `blocks` the Block Kit body."""
    emoji = {"QUOTA_EXCEEDED": ":red_circle:", "QUOTA_WARNING": ":large_orange_circle:"}.get(
        message.kind, ":large_yellow_circle:")
    fields = [
        ("Tenant", message.tenant_name), ("Limit", message.key), ("Task", message.task or "all tasks"),
        ("Used", f"{_amount(message.observed, message.unit)} of {_amount(message.limit, message.unit)}"
                 f" ({message.percent} %)"),
        ("Period", f"{message.window.lower()} from {message.period}"), ("Alert", message.kind_label),
    ]
    if message.user:
        fields.append(("User", message.user))
    return {
        "text": _slack_escape(message.text),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": message.title[:150], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {_slack_escape(message.text)}"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(str(value))}"}
                                           for name, value in fields[:10]]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"LLM gateway alert #{message.alert_id} · {message.created_at}"}]},
        ],
    }


# ------------------------------------------------------------------------------------------ Microsoft Teams

def teams_payload(message: AlertMessage) -> dict[str, Any]:
    """A Teams incoming-webhook message carrying an Adaptive Card (Microsoft's documented envelope:
    type "message", one attachment of contentType application/vnd.microsoft.card.adaptive). Workflows
    (Power Automate) "post to a channel when a webhook request is received" accepts the same body."""
    color = {"QUOTA_EXCEEDED": "Attention", "QUOTA_WARNING": "Warning"}.get(message.kind, "Accent")
    facts = [
        {"title": "Tenant", "value": message.tenant_name},
        {"title": "Limit", "value": message.key},
        {"title": "Task", "value": message.task or "all tasks"},
        {"title": "Used", "value": f"{_amount(message.observed, message.unit)} of "
                                   f"{_amount(message.limit, message.unit)} ({message.percent} %)"},
        {"title": "Period", "value": f"{message.window.lower()} from {message.period}"},
        {"title": "Alert", "value": f"{message.kind_label} (#{message.alert_id})"},
    ]
    if message.user:
        facts.insert(3, {"title": "User", "value": message.user})
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": [
                    {"type": "TextBlock", "text": message.title, "weight": "Bolder", "size": "Medium",
                     "color": color, "wrap": True},
                    {"type": "TextBlock", "text": message.text, "wrap": True},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    }


# ------------------------------------------------------------------------------------------ targets

def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def target_validate(url: str, *, allow_private: bool | None = None) -> str:
    """An http(s) URL with a host; literal private addresses refused unless ALERT_ALLOW_PRIVATE_TARGETS."""
    allow_private = settings.ALERT_ALLOW_PRIVATE_TARGETS if allow_private is None else allow_private
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is no number or out of range
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 literal
        raise InvalidTarget("The target is not a valid URL.") from None
    if parts.scheme not in {"http", "https"}:
        raise InvalidTarget("The target must be an http:// or https:// URL.")
    if not parts.hostname:
        raise InvalidTarget("The target URL has no host.")
    if parts.username or parts.password:
        raise InvalidTarget("The target URL must not carry credentials.")
    if not allow_private:
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            raise InvalidTarget("Targets on private or loopback addresses are not allowed.")
        try:
            private = _is_private(host)
        except ValueError:
            private = False  # a name: checked when it is resolved, at send time
        if private:
            raise InvalidTarget("Targets on private or loopback addresses are not allowed.")
    return url


def _resolved_check(url: str) -> None:
    """At send time: every address the host resolves to must be public (unless private targets are allowed)."""
    if settings.ALERT_ALLOW_PRIVATE_TARGETS:
        return
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise DeliveryError(f"Cannot resolve {parts.hostname}: {exc}") from None
    if any(_is_private(info[4][0].split("%")[0]) for info in infos):
        raise DeliveryError(f"{parts.hostname} resolves to a private address; refused.")


# ------------------------------------------------------------------------------------------ transports

def http_post(url: str, *, content: bytes, headers: dict[str, str]) -> SendResult:
    """One POST with a timeout, no redirects followed. 2xx is success; anything else raises."""
    try:
        target_validate(url)
    except InvalidTarget as exc:
        raise DeliveryError(f"Refused target: {exc}") from None
    _resolved_check(url)
    try:
        with httpx.Client(timeout=settings.ALERT_HTTP_TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = client.post(url, content=content, headers={"User-Agent": USER_AGENT, **headers})
    except httpx.TimeoutException:
        raise DeliveryError(f"Timed out after {settings.ALERT_HTTP_TIMEOUT_SECONDS:g} s.") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from None
    snippet = response.text[:300]
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"HTTP {response.status_code}: {snippet}", response_status=response.status_code)
    return SendResult(response_status=response.status_code, detail=snippet)


def send_webhook(message: AlertMessage, *, url: str, secret: str) -> SendResult:
    body, headers = webhook_request(message, secret=secret)
    return http_post(url, content=body, headers=headers)


def send_slack(message: AlertMessage, *, url: str) -> SendResult:
    return http_post(url, content=json.dumps(slack_payload(message)).encode(),
                     headers={"Content-Type": "application/json"})


def send_teams(message: AlertMessage, *, url: str) -> SendResult:
    result = http_post(url, content=json.dumps(teams_payload(message)).encode(),
                       headers={"Content-Type": "application/json"})
    # Teams connectors answer 200 with the throttling error in the body instead of a 429.
    if "HTTP error 429" in result.detail:
        raise DeliveryError(f"Throttled by Teams: {result.detail}", response_status=429)
    return result


def email_body(message: AlertMessage) -> str:
    lines = [message.text, "", f"Limit:   {message.key}", f"Task:    {message.task or 'all tasks'}"]
    if message.user:
        lines.append(f"User:    {message.user}")
    lines += [
        f"Used:    {_amount(message.observed, message.unit)} of {_amount(message.limit, message.unit)}"
        f" ({message.percent} %)",
        f"Period:  {message.window.lower()} starting {message.period}",
        f"Alert:   {message.kind_label} (#{message.alert_id}, {message.created_at})",
        "", "You receive this because you are an admin of this tenant on the LLM gateway.",
    ]
    return "\n".join(lines)


def send_email(*, subject: str, body: str, recipients: list[str]) -> SendResult:
    """Django's send_mail (EMAIL_* settings). One message, every recipient on it."""
    if not recipients:
        raise DeliveryError("No active tenant admin has an email address.")
    try:
        sent = send_mail(subject[:200], body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    except Exception as exc:  # smtplib.SMTPException, OSError, or whatever a custom backend raises
        raise DeliveryError(f"Email failed: {type(exc).__name__}: {exc}"[:500]) from None
    if sent != 1:
        raise DeliveryError("The email backend reported nothing sent.")
    return SendResult(detail=f"{len(recipients)} recipient(s)")
