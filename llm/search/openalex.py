"""OpenAlex works search: `GET /works?search=...&filter=to_publication_date:...&per-page=...`.

Response shape (https://developers.openalex.org/api-reference/works): `{"meta": {...}, "results": [work]}`
where a work has `id` ("https://openalex.org/W..."), `doi` ("https://doi.org/10...." or null), `title` /
`display_name`, `publication_year`, `abstract_inverted_index` ({word: [positions]} or null) and
`primary_location.landing_page_url`. Since 2026 OpenAlex wants a (free) `api_key`; `mailto` identifies
the caller. Priced per request kind (catalog.SearchSourcePrice): a `search=` request is OpenAlex's
"search" tier ($1 per 1,000 calls), a filter-only list its "list" tier ($0.10 per 1,000).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

import httpx
from django.conf import settings

from llm.search.common import Attempts, External, Hit, SearchError, normalize_doi, with_retries

SERVICE = "openalex"
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"]+")


class _RedactApiKey(logging.Filter):
    """httpx logs every request URL at INFO; OpenAlex takes its key in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any("api_key=" in str(a) for a in record.args):
            record.args = tuple(_KEY_IN_URL.sub(r"\1***", str(a)) if "api_key=" in str(a) else a
                                for a in record.args)
        return True


if not any(isinstance(f, _RedactApiKey) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactApiKey())

SELECT = "id,doi,title,display_name,publication_year,publication_date,abstract_inverted_index,primary_location"
MAX_PER_PAGE = 200


def abstract_from_inverted_index(index: dict[str, list[int]] | None) -> str:
    """Rebuild the abstract text from OpenAlex's {word: [positions]} index."""
    if not isinstance(index, dict):
        return ""
    placed: dict[int, str] = {}
    for word, positions in index.items():
        if not isinstance(positions, list):
            continue
        for position in positions:
            if isinstance(position, int) and position >= 0:
                placed.setdefault(position, word)
    return " ".join(placed[p] for p in sorted(placed))


def _year(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_work(work: Any) -> Hit | None:
    if not isinstance(work, dict):
        return None
    title = work.get("title") or work.get("display_name")
    native = work.get("id") if isinstance(work.get("id"), str) else ""
    if not isinstance(title, str) or not title.strip() or not native:
        return None
    doi = normalize_doi(work.get("doi")) if isinstance(work.get("doi"), str) else ""
    location = work.get("primary_location") if isinstance(work.get("primary_location"), dict) else {}
    url = location.get("landing_page_url") if isinstance(location.get("landing_page_url"), str) else ""
    url = url or (f"https://doi.org/{doi}" if doi else native)
    short_id = native.rsplit("/", 1)[-1]
    date = work.get("publication_date") if isinstance(work.get("publication_date"), str) else ""
    return Hit(source=SERVICE, identifier=doi or short_id, title=title.strip(), date=date[:10],
               year=_year(work.get("publication_year")),
               abstract=abstract_from_inverted_index(work.get("abstract_inverted_index")), url=url, doi=doi,
               native_id=short_id)


class OpenAlexClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.base_url = settings.OPENALEX_BASE_URL.rstrip("/")

    def params(self, query: str, *, size: int, date_cutoff: dt.date | None) -> dict[str, str]:
        params = {"search": query, "per-page": str(max(1, min(size, MAX_PER_PAGE))), "select": SELECT}
        if date_cutoff is not None:
            params["filter"] = f"to_publication_date:{date_cutoff.isoformat()}"
        if settings.OPENALEX_MAILTO:
            params["mailto"] = settings.OPENALEX_MAILTO
        if settings.OPENALEX_API_KEY:
            params["api_key"] = settings.OPENALEX_API_KEY
        return params

    async def search(self, query: str, *, size: int, date_cutoff: dt.date | None, external: External,
                     attempts: Attempts) -> list[Hit]:
        params = self.params(query, size=size, date_cutoff=date_cutoff)

        def build() -> httpx.Request:
            return self.client.build_request("GET", f"{self.base_url}/works", params=params,
                                             headers={"Accept": "application/json"})

        kind = "search" if params.get("search") else "list"
        body = await with_retries(external, SERVICE, build, self.client, attempts, kind=kind)
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise SearchError("openalex answered without a 'results' list", kind="bad_response", transient=False)
        hits = [h for h in (parse_work(w) for w in results) if h is not None]
        for hit in hits:
            hit.found_by.append(query)
        return hits[:size]
