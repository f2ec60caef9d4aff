"""Clients of the providers' organisation usage and cost reports (admin keys, plain HTTPS + JSON).

OpenAI (Admin key, `Authorization: Bearer`), base URL = OPENAI_BASE_URL (default https://api.openai.com/v1):
  GET /organization/usage/completions?start_time=&end_time=&bucket_width=1d&group_by=model&limit=31[&page=]
      -> {"object": "page", "data": [{"object": "bucket", "start_time", "end_time", "results": [
          {"object": "organization.usage.completions.result", "model", "input_tokens" (cached included),
           "input_cached_tokens", "output_tokens", "num_model_requests", ...}]}], "has_more", "next_page"}
  GET /organization/costs?start_time=&end_time=&bucket_width=1d&group_by=line_item&limit=31[&page=]
      -> buckets of {"object": "organization.costs.result", "amount": {"value": <USD>, "currency": "usd"},
          "line_item": "gpt-4o-mini-2024-07-18, cached input", "project_id"}
Anthropic (Admin API key, `x-api-key`, `anthropic-version`), base URL = ANTHROPIC_BASE_URL (default
https://api.anthropic.com):
  GET /v1/organizations/usage_report/messages?starting_at=&ending_at=&bucket_width=1d&group_by[]=model&limit=31
      -> {"data": [{"starting_at", "ending_at", "results": [{"model", "uncached_input_tokens",
          "cache_read_input_tokens", "cache_creation": {"ephemeral_5m_input_tokens",
          "ephemeral_1h_input_tokens"}, "output_tokens", ...}]}], "has_more", "next_page"}
      (no request count: Anthropic's report does not carry one)
  GET /v1/organizations/cost_report?starting_at=&ending_at=&bucket_width=1d&group_by[]=description&limit=31
      -> buckets of {"amount": "<decimal string in cents>", "currency": "USD", "cost_type", "model",
          "token_type", "description", ...}

Each client returns `ProviderUsage` rows keyed by (UTC day, the model name the provider reported).
Failures raise `ReportError` with a message that never carries the key (provider text is scrubbed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import httpx

from llm.providers.scrub import scrub

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
PAGE_LIMIT = 31  # both APIs' maximum number of 1d buckets per page
MAX_PAGES = 100  # a provider that keeps saying has_more is a broken provider, not a reason to loop forever


class ReportError(Exception):
    """The provider's report could not be read. `code`: auth | http | unreachable | bad_response."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ProviderUsage:
    """One UTC day and model as the provider bills it. None: the report does not carry the figure."""

    day: date
    model: str
    requests: int | None = None
    tokens_in: int | None = None
    tokens_cached_in: int | None = None
    tokens_cache_write: int | None = None
    tokens_out: int | None = None
    cost_micro_usd: int | None = None
    cost_exact: Decimal = field(default=Decimal(0), repr=False)  # summed before rounding once

    def add(self, name: str, amount: int) -> None:
        setattr(self, name, (getattr(self, name) or 0) + int(amount))


@dataclass
class Report:
    rows: dict[tuple[date, str], ProviderUsage]
    not_reported: list[str]  # metrics this provider's report never carries

    def row(self, day: date, model: str) -> ProviderUsage:
        key = (day, model)
        if key not in self.rows:
            self.rows[key] = ProviderUsage(day=day, model=model)
        return self.rows[key]

    def finish_costs(self) -> None:
        for row in self.rows.values():
            if row.cost_micro_usd is not None:
                row.cost_micro_usd = int(row.cost_exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ReportError("bad_response", f"the provider's report holds a non-numeric count ({type(value).__name__})")
    try:
        return int(value)
    except ValueError as exc:
        raise ReportError("bad_response", "the provider's report holds a non-numeric count") from exc


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ReportError("bad_response", "the provider's report holds a non-numeric amount") from exc


class _Client:
    provider = ""

    def __init__(self, *, api_key: str, base_url: str, timeout: float,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._key = api_key
        self._base = base_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _get(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        try:
            response = self._http.get(self._base + path, params=params, headers=self.headers())
        except httpx.HTTPError as exc:
            raise ReportError("unreachable", f"{self.provider}: could not reach {self._base}{path}: "
                                             f"{scrub(str(exc) or type(exc).__name__, [self._key])}") from None
        if response.status_code in (401, 403):
            raise ReportError("auth", f"{self.provider} refused the admin key ({response.status_code}): "
                                      f"{self._detail(response)}. An admin key is needed (not a project or "
                                      "model key): set it in the environment or as an admin credential.")
        if response.status_code >= 400:
            raise ReportError("http", f"{self.provider} answered {response.status_code} for {path}: "
                                      f"{self._detail(response)}")
        try:
            body = response.json()
        except ValueError:
            raise ReportError("bad_response", f"{self.provider}: {path} did not answer JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ReportError("bad_response", f"{self.provider}: {path} answered without a list of buckets")
        return body

    def _detail(self, response: httpx.Response) -> str:
        try:
            body = response.json()
            error = body.get("error") if isinstance(body, dict) else None
            text = error.get("message") if isinstance(error, dict) else response.text
        except ValueError:
            text = response.text
        return scrub(str(text or "")[:500], [self._key]) or "(no detail)"

    def _pages(self, path: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """Every bucket of every page (`has_more` / `next_page`, sent back as `page`)."""
        page: str | None = None
        for _ in range(MAX_PAGES):
            body = self._get(path, params + ([("page", page)] if page else []))
            for bucket in body["data"]:
                if not isinstance(bucket, dict) or not isinstance(bucket.get("results", []), list):
                    raise ReportError("bad_response", f"{self.provider}: {path} answered a malformed bucket")
                yield bucket
            page = body.get("next_page")
            if not body.get("has_more") or not page:
                return
        raise ReportError("bad_response", f"{self.provider}: {path} kept paginating past {MAX_PAGES} pages")

    def report(self, day_from: date, day_to: date) -> Report:
        raise NotImplementedError


def _bounds(day_from: date, day_to: date) -> tuple[datetime, datetime]:
    start = datetime(day_from.year, day_from.month, day_from.day, tzinfo=UTC)
    end = datetime(day_to.year, day_to.month, day_to.day, tzinfo=UTC) + timedelta(days=1)
    return start, end


def _in_range(day: date, day_from: date, day_to: date) -> bool:
    return day_from <= day <= day_to


class OpenAIUsageClient(_Client):
    provider = "openai"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}

    def report(self, day_from: date, day_to: date) -> Report:
        start, end = _bounds(day_from, day_to)
        window = [("start_time", str(int(start.timestamp()))), ("end_time", str(int(end.timestamp()))),
                  ("bucket_width", "1d"), ("limit", str(PAGE_LIMIT))]
        report = Report(rows={}, not_reported=["tokens_cache_write"])
        for bucket in self._pages("/organization/usage/completions", [*window, ("group_by", "model")]):
            day = datetime.fromtimestamp(_int(bucket.get("start_time")), UTC).date()
            if not _in_range(day, day_from, day_to):
                continue
            for result in bucket.get("results") or []:
                row = report.row(day, str(result.get("model") or ""))
                row.add("requests", _int(result.get("num_model_requests")))
                row.add("tokens_in", _int(result.get("input_tokens")))
                row.add("tokens_cached_in", _int(result.get("input_cached_tokens")))
                row.add("tokens_out", _int(result.get("output_tokens")))
        for bucket in self._pages("/organization/costs", [*window, ("group_by", "line_item")]):
            day = datetime.fromtimestamp(_int(bucket.get("start_time")), UTC).date()
            if not _in_range(day, day_from, day_to):
                continue
            for result in bucket.get("results") or []:
                amount = result.get("amount") or {}
                if str(amount.get("currency", "usd")).lower() != "usd":
                    raise ReportError("bad_response", f"openai: a cost in {amount.get('currency')!r}, not USD")
                row = report.row(day, openai_line_item_model(str(result.get("line_item") or "")))
                row.cost_exact += _decimal(amount.get("value", 0)) * 1_000_000
                row.cost_micro_usd = 0
        report.finish_costs()
        return report


def openai_line_item_model(line_item: str) -> str:
    """"gpt-4o-mini-2024-07-18, cached input" -> "gpt-4o-mini-2024-07-18"; a line item that names no
    model (e.g. "web search tool calls") stays whole."""
    head, sep, _ = line_item.partition(",")
    return head.strip() if sep else line_item.strip()


class AnthropicUsageClient(_Client):
    provider = "anthropic"

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._key, "anthropic-version": ANTHROPIC_VERSION, "Accept": "application/json"}

    def report(self, day_from: date, day_to: date) -> Report:
        start, end = _bounds(day_from, day_to)
        window = [("starting_at", start.strftime("%Y-%m-%dT%H:%M:%SZ")),
                  ("ending_at", end.strftime("%Y-%m-%dT%H:%M:%SZ")), ("bucket_width", "1d"),
                  ("limit", str(PAGE_LIMIT))]
        report = Report(rows={}, not_reported=["requests"])
        for bucket in self._pages("/v1/organizations/usage_report/messages", [*window, ("group_by[]", "model")]):
            day = _rfc3339_day(bucket.get("starting_at"))
            if not _in_range(day, day_from, day_to):
                continue
            for result in bucket.get("results") or []:
                creation = result.get("cache_creation") or {}
                written = (_int(creation.get("ephemeral_5m_input_tokens"))
                           + _int(creation.get("ephemeral_1h_input_tokens")))
                read = _int(result.get("cache_read_input_tokens"))
                row = report.row(day, str(result.get("model") or ""))
                # The gateway's tokens_in is the whole prompt; Anthropic splits it three ways.
                row.add("tokens_in", _int(result.get("uncached_input_tokens")) + read + written)
                row.add("tokens_cached_in", read)
                row.add("tokens_cache_write", written)
                row.add("tokens_out", _int(result.get("output_tokens")))
        for bucket in self._pages("/v1/organizations/cost_report", [*window, ("group_by[]", "description")]):
            day = _rfc3339_day(bucket.get("starting_at"))
            if not _in_range(day, day_from, day_to):
                continue
            for result in bucket.get("results") or []:
                if str(result.get("currency", "USD")).upper() != "USD":
                    raise ReportError("bad_response", f"anthropic: a cost in {result.get('currency')!r}, not USD")
                row = report.row(day, str(result.get("model") or ""))
                row.cost_exact += _decimal(result.get("amount", "0")) * 10_000  # cents -> micro-USD
                row.cost_micro_usd = 0
        report.finish_costs()
        return report


def _rfc3339_day(value: Any) -> date:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).date()
    except ValueError:
        raise ReportError("bad_response", "a bucket without a valid starting_at") from None


CLIENTS: dict[str, type[_Client]] = {"openai": OpenAIUsageClient, "anthropic": AnthropicUsageClient}
DEFAULT_BASE_URLS = {"openai": OPENAI_DEFAULT_BASE_URL, "anthropic": ANTHROPIC_DEFAULT_BASE_URL}

# Why the others are not reconciled (the command prints this and exits with EXIT_UNSUPPORTED).
UNSUPPORTED: dict[str, str] = {
    "gemini": "Google's Gemini API has no usage or cost report API: its billing is read from Cloud Billing's "
              "export to BigQuery (per SKU, not per request), which this command does not read.",
    "grok": "xAI documents a Management API (management-api.x.ai, a management key and team id) whose billing "
            "section lists 'historical usage' (/v1/billing/teams/{team_id}/usage), but its request and answer "
            "formats are not published in enough detail to build against without a live team to check with; "
            "it is not implemented. Compare in the xAI Console's usage explorer instead.",
}

_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def model_canonical(reported: str, known: set[str]) -> str:
    """The catalog's name for a model as the provider reports it: the same name, or the name
    without its snapshot date ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini", "claude-haiku-4-5-20251001"
    -> "claude-haiku-4-5"); a model the catalog does not know keeps the provider's name."""
    if reported in known:
        return reported
    undated = _SNAPSHOT.sub("", reported)
    return undated if undated in known else reported
