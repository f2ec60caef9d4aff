"""Who may read /metrics: METRICS_ALLOWED_IPS (CIDRs of the client address) and/or METRICS_BEARER_TOKEN.
Both unset, /metrics is open (a scrape target on a private network); both set, both are required."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

from gateway_project.errors import AuthenticationFailed, Forbidden, GatewayError
from tenants.throttling import client_address


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address_allowed(remote: str, cidrs: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.5 is 10.0.0.5 to an allow-list of IPv4 networks
    return any(address in network for network in _networks(cidrs) if network.version == address.version)


def metrics_refusal(request: HttpRequest) -> GatewayError | None:
    """Why this request may not read the metrics, or None."""
    cidrs = tuple(settings.METRICS_ALLOWED_IPS)
    # The client's address as sign-in throttling sees it: REMOTE_ADDR, or through GATEWAY_TRUSTED_PROXY_COUNT proxies.
    if cidrs and not _address_allowed(client_address(request), cidrs):
        return Forbidden("Metrics are not served to this address.", code="metrics_forbidden")
    token = settings.METRICS_BEARER_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return AuthenticationFailed("Metrics need a valid bearer token.", code="metrics_unauthorized")
    return None
