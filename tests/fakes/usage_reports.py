"""Shared machinery of the fakes of the providers' organisation usage/cost reports (admin APIs).

A usage-report fake is a provider fake (it answers model calls exactly as its parent does) that also
answers the admin report endpoints over GET, so one loopback server is "the provider", as the real
host is. Its report is built from what it actually billed (`usage`: one entry per billed generation,
stamped with the UTC day it was billed on) plus what a test adds with `report_extra` (usage the
gateway never saw: another client of the same key, a day with drift). Costs come from the price sheet
the test gives (`prices`: model -> micro-USD per million tokens for input, output, cached input,
cache write), summed exactly and reported in the provider's unit.

Reports are paginated by day buckets (`page_size` buckets per page, capped by the request's `limit`);
every GET is in `received` like the model calls. The admin key is checked (`admin_key`), and a wrong
one gets the provider's own 401. The fault script applies to report requests too: `fail_next(status)`
(the provider's error body) and `malformed_next()` (a 200 whose JSON is cut short); `go_down()` refuses
connections.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.base import Received, _Handler, _Server


@dataclass
class UsageEntry:
    day: date
    model: str
    requests: int = 1
    tokens_in: int = 0  # the whole prompt, cached and cache-write included (the gateway's meaning)
    tokens_cached_in: int = 0
    tokens_cache_write: int = 0
    tokens_out: int = 0


class _GetHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.fake._dispatch_get(self)


def utc_today() -> date:
    return datetime.now(UTC).date()


class UsageReportMixin:
    """Mix in before a FakeProvider subclass: `class FakeX(UsageReportMixin, FakeOpenAI)`."""

    def __init__(self, *args: Any, admin_key: str = "admin-key-0123456789abcdef",
                 prices: dict[str, tuple[int, int, int, int]] | None = None,
                 snapshots: dict[str, str] | None = None, page_size: int = 31, **kwargs: Any) -> None:
        self.admin_key = admin_key
        self.prices = dict(prices or {})
        self.snapshots = dict(snapshots or {})  # requested model -> the (dated) name the report shows
        self.page_size = page_size
        self.usage: list[UsageEntry] = []
        self._usage_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    # ---- what the report holds -----------------------------------------------------------------

    def bill(self, model: str, tokens_in: int, tokens_out: int) -> None:
        super().bill(model, tokens_in, tokens_out)
        # The prompt-cache split the parent fake reported for this call (its `cached_tokens` /
        # `cache_write_tokens`, taken from the prompt in that order), so the report matches the answer.
        cached = min(int(getattr(self, "cached_tokens", 0) or 0), tokens_in)
        written = min(int(getattr(self, "cache_write_tokens", 0) or 0), tokens_in - cached)
        with self._usage_lock:
            self.usage.append(UsageEntry(utc_today(), model, 1, tokens_in, cached, written, tokens_out))

    def report_extra(self, day: date, model: str, *, requests: int = 0, tokens_in: int = 0,
                     tokens_cached_in: int = 0, tokens_cache_write: int = 0, tokens_out: int = 0) -> None:
        """Usage the provider billed that did not go through the gateway (or a test's injected drift)."""
        with self._usage_lock:
            self.usage.append(UsageEntry(day, model, requests, tokens_in, tokens_cached_in, tokens_cache_write,
                                         tokens_out))

    def totals(self, day: date) -> dict[str, UsageEntry]:
        """The day's usage per reported model name."""
        out: dict[str, UsageEntry] = {}
        with self._usage_lock:
            entries = list(self.usage)
        for e in entries:
            if e.day != day:
                continue
            name = self.snapshots.get(e.model, e.model)
            t = out.setdefault(name, UsageEntry(day, e.model, 0))
            t.requests += e.requests
            t.tokens_in += e.tokens_in
            t.tokens_cached_in += e.tokens_cached_in
            t.tokens_cache_write += e.tokens_cache_write
            t.tokens_out += e.tokens_out
        return out

    def cost_parts(self, entry: UsageEntry) -> dict[str, Decimal]:
        """Exact cost in micro-USD of each kind of token of an entry, at the price sheet's rates."""
        p_in, p_out, p_cached, p_write = self.prices.get(entry.model, (0, 0, 0, 0))
        uncached = entry.tokens_in - entry.tokens_cached_in - entry.tokens_cache_write
        mega = Decimal(1_000_000)
        return {"input": Decimal(uncached * p_in) / mega,
                "cached input": Decimal(entry.tokens_cached_in * p_cached) / mega,
                "cache write": Decimal(entry.tokens_cache_write * p_write) / mega,
                "output": Decimal(entry.tokens_out * p_out) / mega}

    # ---- the GET side ----------------------------------------------------------------------------

    def _serve(self) -> None:
        httpd = _Server(("127.0.0.1", self.port), _GetHandler)
        httpd.fake = self  # type: ignore[assignment]
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"fake-{self.name}-usage-{self.port}").start()
        self._httpd = httpd

    def _dispatch_get(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.received.append(Received(h.path, {k.lower(): v for k, v in h.headers.items()}, None))
            fault = self._faults.popleft() if self._faults else None  # the same script as model calls
        try:
            if not self.admin_authorized(h):
                return self.send_admin_unauthorized(h)
            if fault is not None and fault.kind == "status":
                return self.send_json(h, fault.status, self.report_error(fault.status, fault.message))
            if fault is not None and fault.kind == "malformed":
                return self.send_json(h, 200, raw=b'{"object": "page", "data": [{"object": "bucket", "start_ti')
            status, payload = self.report_get(parts.path, query)
            self.send_json(h, status, payload)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            h.close_connection = True

    def admin_authorized(self, h: _Handler) -> bool:
        raise NotImplementedError

    def send_admin_unauthorized(self, h: _Handler) -> None:
        raise NotImplementedError

    def report_get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        raise NotImplementedError

    def report_error(self, status: int, message: str | None) -> Any:
        """The provider's error body for a scripted failure (`fail_next`) of a report request."""
        return self.error_body(status, None, message or f"fake {self.name}: error {status}")

    # ---- pagination over day buckets -------------------------------------------------------------

    def page_of_days(self, start: date, end: date, limit: int, page: str | None) -> tuple[list[date], str | None]:
        """The days of this page of [start, end), and the next page's token (None: the last page)."""
        days = []
        day = start
        while day < end:
            days.append(day)
            day += timedelta(days=1)
        offset = int(base64.urlsafe_b64decode(page.encode()).decode()) if page else 0
        size = max(1, min(limit, self.page_size))
        chunk = days[offset:offset + size]
        nxt = offset + size
        token = base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < len(days) else None
        return chunk, token


def one(query: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = query.get(name)
    return values[-1] if values else default
