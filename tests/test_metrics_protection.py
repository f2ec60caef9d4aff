"""/metrics protection: a bearer token (METRICS_BEARER_TOKEN) and/or an allow-list of client addresses
(METRICS_ALLOWED_IPS, CIDRs); both unset, /metrics stays open to any scraper."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-7f3a9c"


def scrape(*, token: str | None = None, address: str = "127.0.0.1", scheme: str = "Bearer", **headers):
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"{scheme} {token}"
    return Client().get("/metrics", REMOTE_ADDR=address, **headers)


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert TOKEN not in response.content.decode()


def test_open_when_nothing_is_configured():
    response = scrape(address="203.0.113.9")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")


@override_settings(METRICS_BEARER_TOKEN=TOKEN)
def test_bearer_token_is_required():
    missing = scrape()
    assert_error(missing, 401, "metrics_unauthorized")
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert_error(scrape(token="wrong-token"), 401, "metrics_unauthorized")
    assert_error(scrape(token=TOKEN, scheme="Basic"), 401, "metrics_unauthorized")
    assert_error(scrape(token=TOKEN[:-1]), 401, "metrics_unauthorized")
    ok = scrape(token=TOKEN)
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain")
    assert scrape(token=TOKEN, scheme="bearer").status_code == 200  # the scheme is case-insensitive


@override_settings(METRICS_ALLOWED_IPS=["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])
def test_only_allowed_addresses_may_scrape():
    assert_error(scrape(address="127.0.0.1"), 403, "metrics_forbidden")
    assert_error(scrape(address="192.0.2.8"), 403, "metrics_forbidden")
    assert_error(scrape(address="not-an-address"), 403, "metrics_forbidden")
    for allowed in ("10.20.30.40", "192.0.2.7", "2001:db8::5", "::ffff:10.1.1.1"):
        assert scrape(address=allowed).status_code == 200, allowed


@override_settings(METRICS_ALLOWED_IPS=["10.0.0.0/8"], GATEWAY_TRUSTED_PROXY_COUNT=1)
def test_behind_a_trusted_proxy_the_forwarded_address_counts():
    # The proxy (127.0.0.1) appends the scraper's address; what a client wrote left of it is never read.
    assert scrape(address="127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.8.7").status_code == 200
    assert_error(scrape(address="127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.8.7, 198.51.100.4"), 403, "metrics_forbidden")
    assert_error(scrape(address="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.4"), 403, "metrics_forbidden")


@override_settings(METRICS_BEARER_TOKEN=TOKEN, METRICS_ALLOWED_IPS=["10.0.0.0/8"])
def test_both_set_both_are_required():
    assert_error(scrape(address="10.0.0.1"), 401, "metrics_unauthorized")
    assert_error(scrape(address="127.0.0.1", token=TOKEN), 403, "metrics_forbidden")
    assert scrape(address="10.0.0.1", token=TOKEN).status_code == 200


def test_a_malformed_allow_list_stops_the_start():
    from gateway_project.settings import _cidrs_check

    assert _cidrs_check(["10.0.0.0/8", " 127.0.0.1 ", ""]) == ["10.0.0.0/8", "127.0.0.1/32"]
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_IPS"):
        _cidrs_check(["10.0.0.0/33"])
