"""Fake of OpenAI's organization Usage and Costs APIs (Admin key), on top of the chat fake.

`FakeOpenAIOrg` answers `POST /v1/chat/completions` as `FakeOpenAI` does (with the model key) and, with the
Admin key (`Authorization: Bearer <admin_key>`):

- `GET /v1/organization/usage/completions?start_time=&end_time=&bucket_width=1d&group_by=model&limit=&page=`:
  `{"object": "page", "data": [{"object": "bucket", "start_time", "end_time", "results": [
  {"object": "organization.usage.completions.result", "input_tokens", "output_tokens", "input_cached_tokens",
  "input_audio_tokens", "output_audio_tokens", "num_model_requests", "project_id", "user_id", "api_key_id",
  "model", "batch", "service_tier"}]}], "has_more", "next_page"}` (one bucket per UTC day, empty days included);
- `GET /v1/organization/costs?start_time=&end_time=&bucket_width=1d&group_by=line_item&limit=&page=`:
  buckets of `{"object": "organization.costs.result", "amount": {"value": <USD>, "currency": "usd"},
  "line_item": "<model>, input" | "<model>, cached input" | "<model>, output", "project_id": null}`.

A wrong Admin key gets OpenAI's 401 `invalid_api_key`, quoting the key it was sent (as the real API does).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.usage_reports import UsageReportMixin, one

MAX_LIMIT = 31


class FakeOpenAIOrg(UsageReportMixin, FakeOpenAI):
    name = "openai-org"

    def admin_authorized(self, h) -> bool:
        return h.headers.get("Authorization") == f"Bearer {self.admin_key}"

    def send_admin_unauthorized(self, h) -> None:
        sent = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
        self.send_json(h, 401, {"error": {
            "message": f"Incorrect API key provided: {sent}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})

    def _bad(self, message: str) -> tuple[int, Any]:
        return 400, self.error_body(400, None, message)

    def report_get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path not in ("/v1/organization/usage/completions", "/v1/organization/costs"):
            return 404, self.error_body(404, "unknown_url", f"Unknown request URL: GET {path}")
        try:
            start_ts = int(one(query, "start_time") or "")
            end_ts = int(one(query, "end_time") or str(int(datetime.now(UTC).timestamp())))
            limit = int(one(query, "limit", "7"))
        except ValueError:
            return self._bad("start_time is required; start_time, end_time and limit are integers")
        if one(query, "bucket_width", "1d") != "1d":
            return self._bad("this fake serves bucket_width=1d only")
        if not 1 <= limit <= MAX_LIMIT:
            return self._bad(f"limit must be between 1 and {MAX_LIMIT} for bucket_width=1d")
        start = datetime.fromtimestamp(start_ts, UTC).date()
        end = datetime.fromtimestamp(end_ts, UTC).date()
        if datetime.fromtimestamp(end_ts, UTC) > datetime(end.year, end.month, end.day, tzinfo=UTC):
            end += timedelta(days=1)  # a partial last day still gets its bucket
        days, token = self.page_of_days(start, end, limit, one(query, "page"))
        costs = path.endswith("/costs")
        group = query.get("group_by", []) + query.get("group_by[]", [])
        data = []
        for day in days:
            begin = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
            totals = self.totals(day)
            results = self._costs(totals, "line_item" in group) if costs else self._usage(totals, "model" in group)
            data.append({"object": "bucket", "start_time": begin, "end_time": begin + 86_400, "results": results})
        return 200, {"object": "page", "data": data, "has_more": token is not None, "next_page": token}

    @staticmethod
    def _usage(totals, by_model: bool) -> list[dict[str, Any]]:
        def result(model: str | None, entries) -> dict[str, Any]:
            return {"object": "organization.usage.completions.result",
                    "input_tokens": sum(e.tokens_in for e in entries),
                    "output_tokens": sum(e.tokens_out for e in entries),
                    "input_cached_tokens": sum(e.tokens_cached_in for e in entries), "input_audio_tokens": 0,
                    "output_audio_tokens": 0, "num_model_requests": sum(e.requests for e in entries),
                    "project_id": None, "user_id": None, "api_key_id": None, "model": model, "batch": None,
                    "service_tier": None}

        if not totals:
            return []
        if by_model:
            return [result(name, [entry]) for name, entry in sorted(totals.items())]
        return [result(None, list(totals.values()))]

    def _costs(self, totals, by_line_item: bool) -> list[dict[str, Any]]:
        items = []
        for name, entry in sorted(totals.items()):
            for kind, micro in self.cost_parts(entry).items():
                if kind == "cache write" or (kind == "cached input" and not entry.tokens_cached_in):
                    continue
                items.append((f"{name}, {kind}", micro))
        if not items:
            return []

        def result(line_item: str | None, micro) -> dict[str, Any]:
            # OpenAI sends a JSON number of dollars.
            return {"object": "organization.costs.result", "amount": {"value": float(micro / 1_000_000),
                                                                       "currency": "usd"},
                    "line_item": line_item, "project_id": None}

        if by_line_item:
            return [result(item, micro) for item, micro in items]
        return [result(None, sum(micro for _, micro in items))]
