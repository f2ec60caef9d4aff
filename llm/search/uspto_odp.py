"""USPTO Open Data Portal, patent application search: `POST {base}/api/v1/patent/applications/search`
with the key in the `X-API-KEY` header (keys: data.uspto.gov, MyODP).

Request body (ODP API query spec): `{"q": text, "filters": [{"name": field, "value": [..]}],
"rangeFilters": [{"field": field, "valueFrom": "YYYY-MM-DD", "valueTo": "YYYY-MM-DD"}],
"pagination": {"offset": n, "limit": n}, "sort": [{"field": f, "order": "Desc"}], "fields": [..]}` --
note `filters` name their field with `name`, `rangeFilters` and `sort` with `field`. Answer:
`{"count": N, "patentFileWrapperDataBag": [{"applicationNumberText", "applicationMetaData": {
"inventionTitle", "filingDate", "grantDate", "patentNumber", "earliestPublicationNumber",
"earliestPublicationDate", "applicationTypeLabelName", "cpcClassificationBag": ["A47B  88/00"],
"firstApplicantName", "applicantBag": [{"applicantNameText"}], "applicationStatusDescriptionText"}}],
"requestIdentifier"}`. No match is a 404 with the same error shape as other failures; the search answer
carries no abstract (it lives in the grant/pre-grant XML), so ODP hits are charted on their titles
unless another source supplies the abstract of the same document.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
from django.conf import settings

from llm.search.common import Attempts, External, Hit, SearchError, normalize_patent_number, with_retries

SERVICE = "uspto_odp"
PAGE_LIMIT = 100  # ODP pages; a larger `size` is fetched in several requests, each counted
FIELDS = [
    "applicationNumberText",
    *(f"applicationMetaData.{name}" for name in (
        "inventionTitle", "filingDate", "grantDate", "patentNumber", "earliestPublicationNumber",
        "earliestPublicationDate", "applicationTypeLabelName", "cpcClassificationBag", "firstApplicantName",
        "applicantBag", "applicationStatusDescriptionText",
    )),
]
_SPECIAL = re.compile(r'([+\-!(){}\[\]^"~*?:\\/]|&&|\|\|)')


def configured() -> bool:
    return bool(settings.USPTO_ODP_API_KEY)


def escape(text: str) -> str:
    """Free text as ODP's (OpenSearch query-string) syntax reads it: its operators escaped."""
    return _SPECIAL.sub(r"\\\1", " ".join(text.split()))


def query_body(query: str, *, offset: int, limit: int, date_cutoff: dt.date | None,
               cpc: list[str] | None = None, application_types: list[str] | None = None) -> dict[str, Any]:
    q = escape(query)
    if cpc:
        q = f"({q}) AND (" + " OR ".join(f"applicationMetaData.cpcClassificationBag:{escape(c)}*"
                                         for c in cpc) + ")"
    body: dict[str, Any] = {
        "q": q,
        "filters": [{"name": "applicationMetaData.applicationTypeLabelName",
                     "value": application_types or ["Utility"]}],
        "pagination": {"offset": offset, "limit": limit},
        "sort": [{"field": "applicationMetaData.filingDate", "order": "Desc"}],
        "fields": FIELDS,
    }
    if date_cutoff is not None:
        body["rangeFilters"] = [{"field": "applicationMetaData.filingDate", "valueFrom": "1790-01-01",
                                 "valueTo": date_cutoff.isoformat()}]
    return body


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def publication_number(meta: dict[str, Any]) -> tuple[str, str]:
    """(number with kind code, kind). A grant is B1 without an earlier publication, B2 with one
    (S for a design); otherwise the earliest pre-grant publication (e.g. US20090108066A1)."""
    granted, earliest = _str(meta.get("patentNumber")), _str(meta.get("earliestPublicationNumber"))
    if granted:
        design = _str(meta.get("applicationTypeLabelName")).lower() == "design"
        kind = "S" if design else ("B2" if earliest else "B1")
        digits = re.sub(r"[^0-9A-Z]", "", granted.upper())
        return f"US{digits.removeprefix('US')}{kind}", kind
    if earliest:
        match = re.search(r"([A-Z]\d?)$", earliest.upper())
        return earliest.upper().replace(" ", ""), match.group(1) if match else ""
    return "", ""


def parse_record(record: Any) -> Hit | None:
    if not isinstance(record, dict):
        return None
    meta = record.get("applicationMetaData")
    application = _str(record.get("applicationNumberText"))
    if not isinstance(meta, dict) or not application:
        return None
    title = _str(meta.get("inventionTitle"))
    if not title:
        return None
    number, kind = publication_number(meta)
    date = _str(meta.get("grantDate")) or _str(meta.get("earliestPublicationDate")) or _str(meta.get("filingDate"))
    year = int(date[:4]) if len(date) >= 4 and date[:4].isdigit() else None
    cpc_bag = meta.get("cpcClassificationBag") if isinstance(meta.get("cpcClassificationBag"), list) else []
    cpc = [" ".join(c.split()).replace(" ", "") for c in cpc_bag if isinstance(c, str) and c.strip()]
    applicants = [_str(a.get("applicantNameText")) for a in meta.get("applicantBag") or []
                  if isinstance(a, dict) and _str(a.get("applicantNameText"))]
    if not applicants and _str(meta.get("firstApplicantName")):
        applicants = [_str(meta.get("firstApplicantName"))]
    return Hit(source=SERVICE, identifier=number or f"US-APP-{application}", title=title, year=year, abstract="",
               url=f"https://patentcenter.uspto.gov/applications/{application}",
               patent_number=normalize_patent_number(number) if number else "", publication_number=number,
               kind=kind, date=date[:10], cpc=cpc, applicants=applicants, native_id=application)


class UsptoOdpClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.base_url = settings.USPTO_ODP_BASE_URL.rstrip("/")

    async def search(self, query: str, *, size: int, date_cutoff: dt.date | None, external: External,
                     attempts: Attempts, cpc: list[str] | None = None) -> list[Hit]:
        hits: list[Hit] = []
        offset = 0
        while len(hits) < size:
            limit = min(PAGE_LIMIT, size - len(hits))
            body = query_body(query, offset=offset, limit=limit, date_cutoff=date_cutoff, cpc=cpc)

            def build(body: dict[str, Any] = body) -> httpx.Request:
                return self.client.build_request(
                    "POST", f"{self.base_url}/api/v1/patent/applications/search", json=body,
                    headers={"X-API-KEY": settings.USPTO_ODP_API_KEY, "Accept": "application/json"})

            try:
                answer = await with_retries(external, SERVICE, build, self.client, attempts, kind="search")
            except SearchError as error:
                if error.kind == "http_404":  # ODP's answer to "no matching records"
                    break
                raise
            bag = answer.get("patentFileWrapperDataBag") if isinstance(answer, dict) else None
            if bag is None and isinstance(answer, dict) and answer.get("count") == 0:
                bag = []
            if not isinstance(bag, list):
                raise SearchError("uspto_odp answered without a 'patentFileWrapperDataBag' list", kind="bad_response",
                                  transient=False)
            hits.extend(h for h in (parse_record(r) for r in bag) if h is not None)
            total = answer.get("count") if isinstance(answer.get("count"), int) else 0
            offset += len(bag)
            if not bag or offset >= total:
                break
        for hit in hits:
            hit.found_by.append(query)
        return hits[:size]
