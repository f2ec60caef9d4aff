"""PatentsView PatentSearch API: `POST /api/v1/patent/` with header `X-Api-Key`.

Request body (https://search.patentsview.org/docs/docs/Search%20API/SearchAPIReference):
`{"q": {query}, "f": [fields], "o": {"size": n}, "s": [{"patent_date": "desc"}]}` where the query language
has `_text_all` / `_text_any` / `_text_phrase` for full-text fields (patent_title, patent_abstract),
`_gte` / `_lte` for dates and `_and` / `_or`. Response: `{"error": false, "count": n, "total_hits": N,
"patents": [{"patent_id", "patent_title", "patent_abstract", "patent_date"}]}`. US grants only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from django.conf import settings

from llm.search.common import Attempts, External, Hit, SearchError, normalize_patent_number, with_retries

SERVICE = "patentsview"
FIELDS = ["patent_id", "patent_title", "patent_abstract", "patent_date"]
MAX_SIZE = 1000


def configured() -> bool:
    return bool(settings.PATENTSVIEW_API_KEY)


def query_body(query: str, *, size: int, date_cutoff: dt.date | None) -> dict[str, Any]:
    # All the words in the title or in the abstract; or some in both (compound words such as
    # "self-closing" make an all-words match too strict on its own).
    text: dict[str, Any] = {"_or": [{"_text_all": {"patent_title": query}},
                                    {"_text_all": {"patent_abstract": query}},
                                    {"_and": [{"_text_any": {"patent_title": query}},
                                              {"_text_any": {"patent_abstract": query}}]}]}
    q = text if date_cutoff is None else {"_and": [text, {"_lte": {"patent_date": date_cutoff.isoformat()}}]}
    return {"q": q, "f": FIELDS, "o": {"size": max(1, min(size, MAX_SIZE))}, "s": [{"patent_date": "desc"}]}


def parse_patent(patent: Any) -> Hit | None:
    if not isinstance(patent, dict):
        return None
    number, title = patent.get("patent_id"), patent.get("patent_title")
    if not isinstance(number, str) or not number.strip() or not isinstance(title, str) or not title.strip():
        return None
    date = patent.get("patent_date") if isinstance(patent.get("patent_date"), str) else ""
    year = int(date[:4]) if len(date) >= 4 and date[:4].isdigit() else None
    identifier = normalize_patent_number(number)
    abstract = patent.get("patent_abstract") if isinstance(patent.get("patent_abstract"), str) else ""
    return Hit(source=SERVICE, identifier=identifier, title=title.strip(), year=year, abstract=abstract,
               url=f"https://patents.google.com/patent/{identifier}", patent_number=identifier,
               native_id=number.strip())


class PatentsViewClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.base_url = settings.PATENTSVIEW_BASE_URL.rstrip("/")

    async def search(self, query: str, *, size: int, date_cutoff: dt.date | None, external: External,
                     attempts: Attempts) -> list[Hit]:
        body = query_body(query, size=size, date_cutoff=date_cutoff)

        def build() -> httpx.Request:
            return self.client.build_request(
                "POST", f"{self.base_url}/api/v1/patent/", json=body,
                headers={"X-Api-Key": settings.PATENTSVIEW_API_KEY, "Accept": "application/json"})

        answer = await with_retries(external, SERVICE, build, self.client, attempts)
        patents = answer.get("patents") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and answer.get("error") is True:
            raise SearchError("patentsview reported an error", kind="service_error", transient=False)
        if patents is None and isinstance(answer, dict) and answer.get("count") == 0:
            patents = []  # no match: some versions omit the list
        if not isinstance(patents, list):
            raise SearchError("patentsview answered without a 'patents' list", kind="bad_response", transient=False)
        hits = [h for h in (parse_patent(p) for p in patents) if h is not None]
        for hit in hits:
            hit.found_by.append(query)
        return hits[:size]
