"""Fake of Anthropic's Admin API usage and cost reports, on top of the Messages fake.

`FakeAnthropicOrg` answers `POST /v1/messages` as `FakeAnthropic` does (with the model key) and, with the
Admin API key (`x-api-key: <admin_key>`, `anthropic-version` required):

- `GET /v1/organizations/usage_report/messages?starting_at=&ending_at=&bucket_width=1d&group_by[]=model&limit=&page=`:
  `{"data": [{"starting_at", "ending_at", "results": [{"uncached_input_tokens", "cache_creation":
  {"ephemeral_1h_input_tokens", "ephemeral_5m_input_tokens"}, "cache_read_input_tokens", "output_tokens",
  "server_tool_use": {"web_search_requests"}, "api_key_id", "workspace_id", "model", "service_tier",
  "context_window"}]}], "has_more", "next_page"}` — no request count, as the real report has none;
- `GET /v1/organizations/cost_report?starting_at=&ending_at=&bucket_width=1d&group_by[]=description&limit=&page=`:
  buckets of `{"currency": "USD", "amount": "<decimal string, cents>", "workspace_id", "description",
  "cost_type": "tokens", "context_window", "model", "service_tier", "token_type"}`.

A wrong key gets Anthropic's 401 `authentication_error` ("invalid x-api-key").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.usage_reports import UsageReportMixin, one

MAX_LIMIT = 31
TOKEN_TYPES = {"input": "uncached_input_tokens", "cached input": "cache_read_input_tokens",
               "cache write": "cache_creation.ephemeral_5m_input_tokens", "output": "output_tokens"}


def _stamp(day) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeAnthropicOrg(UsageReportMixin, FakeAnthropic):
    name = "anthropic-org"

    def admin_authorized(self, h) -> bool:
        return h.headers.get("x-api-key") == self.admin_key

    def send_admin_unauthorized(self, h) -> None:
        self.send_json(h, 401, {"type": "error", "error": {"type": "authentication_error",
                                                           "message": "invalid x-api-key"}})

    def _bad(self, message: str) -> tuple[int, Any]:
        return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}}

    def report_get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path not in ("/v1/organizations/usage_report/messages", "/v1/organizations/cost_report"):
            return 404, {"type": "error", "error": {"type": "not_found_error", "message": f"Not found: {path}"}}
        if not one(query, "starting_at"):
            return self._bad("starting_at: Field required")
        try:
            start = datetime.fromisoformat(one(query, "starting_at").replace("Z", "+00:00")).astimezone(UTC).date()
            ending = one(query, "ending_at")
            end = (datetime.fromisoformat(ending.replace("Z", "+00:00")).astimezone(UTC).date() if ending
                   else datetime.now(UTC).date())
            limit = int(one(query, "limit", "7"))
        except ValueError:
            return self._bad("starting_at / ending_at must be RFC 3339 timestamps and limit a number")
        if one(query, "bucket_width", "1d") != "1d":
            return self._bad("this fake serves bucket_width=1d only")
        if not 1 <= limit <= MAX_LIMIT:
            return self._bad(f"limit: must be between 1 and {MAX_LIMIT}")
        days, token = self.page_of_days(start, end, limit, one(query, "page"))
        costs = path.endswith("/cost_report")
        group = query.get("group_by[]", []) + query.get("group_by", [])
        data = []
        for day in days:
            totals = self.totals(day)
            results = self._costs(totals, "description" in group) if costs else self._usage(totals, "model" in group)
            data.append({"starting_at": _stamp(day), "ending_at": _stamp(day.fromordinal(day.toordinal() + 1)),
                         "results": results})
        return 200, {"data": data, "has_more": token is not None, "next_page": token}

    @staticmethod
    def _usage(totals, by_model: bool) -> list[dict[str, Any]]:
        def result(model: str | None, entries) -> dict[str, Any]:
            cached = sum(e.tokens_cached_in for e in entries)
            written = sum(e.tokens_cache_write for e in entries)
            return {"uncached_input_tokens": sum(e.tokens_in for e in entries) - cached - written,
                    "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": written},
                    "cache_read_input_tokens": cached, "output_tokens": sum(e.tokens_out for e in entries),
                    "server_tool_use": {"web_search_requests": 0}, "api_key_id": None, "workspace_id": None,
                    "model": model, "service_tier": None, "context_window": None}

        if not totals:
            return []
        if by_model:
            return [result(name, [entry]) for name, entry in sorted(totals.items())]
        return [result(None, list(totals.values()))]

    def _costs(self, totals, by_description: bool) -> list[dict[str, Any]]:
        items = []
        for name, entry in sorted(totals.items()):
            for kind, micro in self.cost_parts(entry).items():
                if micro:
                    items.append((name, kind, micro))
        if not items:
            return []

        def cents(micro) -> str:
            return str(micro / 10_000)  # Anthropic reports a decimal string in cents

        if not by_description:
            return [{"currency": "USD", "amount": cents(sum(m for _, _, m in items)), "workspace_id": None,
                     "description": None, "cost_type": None, "context_window": None, "model": None,
                     "service_tier": None, "token_type": None}]
        return [{"currency": "USD", "amount": cents(micro), "workspace_id": None,
                 "description": f"{name} {kind} tokens", "cost_type": "tokens", "context_window": "0-200k",
                 "model": name, "service_tier": "standard", "token_type": TOKEN_TYPES[kind]}
                for name, kind, micro in items]
