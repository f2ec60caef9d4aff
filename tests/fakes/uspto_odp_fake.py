"""A loopback fake of the USPTO Open Data Portal patent application search:
`POST /api/v1/patent/applications/search` with the key in `X-API-KEY`.

Body `{"q", "filters": [{"name", "value": [..]}], "rangeFilters": [{"field", "valueFrom", "valueTo"}],
"pagination": {"offset", "limit"}, "sort": [..], "fields": [..]}`; answer `{"count": N,
"patentFileWrapperDataBag": [{"applicationNumberText", "applicationMetaData": {...}}],
"requestIdentifier"}`. A wrong key is a 403, a limit above 100 or a bad range a 400, no match a 404 --
each with ODP's error body `{"code", "error", "errorDetails", "requestIdentifier"}`. The search matches
words of `q` (escapes and field clauses dropped) against title and abstract, as ODP's full text does;
answers carry no abstract, as ODP's don't.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.fakes.openalex_fake import Request, SearchFake, words

# application number, title, abstract (searched, never returned), filing, grant, patent no., earliest pub, cpc,
# applicant
APPLICATIONS = [
    ("14100001", "Self-closing hinge with magnetorheological damper",
     "A hinge for a door comprises a magnetorheological damper whose coil controls the closing speed of the door.",
     "2013-05-02", "2016-04-05", "9000001", "US20140300001A1", ["E05F   3/14", "F16F   9/53"], "Hinge Works Inc."),
    ("13100002", "Soft close hinge for cabinet doors",
     "A soft close hinge uses a viscous damper to slow the closing door.",
     "2011-02-14", "2013-10-22", "9000002", "", ["E05F   5/02"], "Cabinetry LLC"),
    ("16100003", "Door hinge with angle sensor and electronic brake",
     "An angle sensor measures the door position and an electronic brake controls the closing speed of the hinge.",
     "2018-01-09", "2019-12-31", "9000003", "US20190200003A1", ["E05F  15/00", "E05Y 2400/44"], "Smart Doors Co."),
    ("17100004", "Magnetorheological fluid damper with position sensing for doors",
     "A magnetorheological fluid damper for a door hinge with a position sensor and controller adjusting the "
     "damping.", "2021-03-09", "", "", "US20210300004A1", ["F16F   9/53"], "Hinge Works Inc."),
    ("12100005", "Lithium battery cooling plate", "A cooling plate for battery modules.",
     "2007-07-01", "2008-07-01", "9000005", "", ["H01M  10/613"], "Battery Corp."),
]


def record(entry: tuple) -> dict[str, Any]:
    app, title, _abstract, filing, grant, patent, earliest, cpc, applicant = entry
    meta: dict[str, Any] = {
        "inventionTitle": title, "filingDate": filing, "applicationTypeLabelName": "Utility",
        "applicationTypeCode": "UTL", "cpcClassificationBag": cpc, "firstApplicantName": applicant,
        "applicantBag": [{"applicantNameText": applicant, "correspondenceAddressBag": []}],
        "applicationStatusDescriptionText": "Patented Case" if grant else "Docketed New Case - Ready for Examination",
        "effectiveFilingDate": filing,
    }
    if grant:
        meta.update(grantDate=grant, patentNumber=patent)
    if earliest:
        meta.update(earliestPublicationNumber=earliest, earliestPublicationDate=f"{earliest[2:6]}-06-01")
    return {"applicationNumberText": app, "applicationMetaData": meta, "eventDataBag": []}


def _query_words(q: str) -> set[str]:
    q = re.sub(r"applicationMetaData\.[A-Za-z.]+:\S+", " ", q)  # field clauses (cpc) are filters, not text
    q = re.sub(r"\\(.)", r"\1", q)
    return {w for w in words(q) if w not in {"and", "or", "not"}} - {"a", "the", "of"}


class UsptoOdpFake(SearchFake):
    name = "uspto_odp"

    def __init__(self, api_key: str = "odp-test-key") -> None:
        self.api_key = api_key
        super().__init__()

    def error(self, status: int, message: str) -> tuple[int, Any, dict[str, str]]:
        names = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}
        return status, {"code": status, "error": names.get(status, "Error"), "errorDetails": message,
                        "requestIdentifier": str(uuid.uuid4())}, {}

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if request.method != "POST" or request.path != "/api/v1/patent/applications/search":
            return self.error(404, f"no route {request.method} {request.path}")
        if request.headers.get("x-api-key") != self.api_key:
            return self.error(403, "Missing or invalid API key")
        body = request.body if isinstance(request.body, dict) else None
        if body is None:
            return self.error(400, "The request body must be JSON")
        page = body.get("pagination") or {}
        offset, limit = page.get("offset", 0), page.get("limit", 25)
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0 or not 1 <= limit <= 100:
            return self.error(400, "pagination.limit must be between 1 and 100")
        wanted = _query_words(str(body.get("q") or ""))
        cpc_prefixes = [m.replace("\\", "") for m in re.findall(r"cpcClassificationBag:(\S+?)\*", str(body.get("q")))]
        types = {v for f in body.get("filters") or [] if f.get("name", "").endswith("applicationTypeLabelName")
                 for v in f.get("value", [])}
        upper = lower = None
        for rng in body.get("rangeFilters") or []:
            if not isinstance(rng, dict) or "field" not in rng:
                return self.error(400, "rangeFilters entries need 'field', 'valueFrom' and 'valueTo'")
            if rng["field"].endswith("filingDate"):
                lower, upper = rng.get("valueFrom"), rng.get("valueTo")
        matched = []
        for entry in APPLICATIONS:
            if types and "Utility" not in types:
                continue
            if (upper and entry[3] > upper) or (lower and entry[3] < lower):
                continue
            if cpc_prefixes and not any(c.replace(" ", "").startswith(p) for c in entry[7] for p in cpc_prefixes):
                continue
            score = len(wanted & set(words(f"{entry[1]} {entry[2]}")))
            if score >= min(2, len(wanted)):
                matched.append((-score, entry[0], entry))
        matched.sort()
        if not matched:
            return self.error(404, "No matching records found")
        bag = [record(e) for _, _, e in matched]
        return 200, {"count": len(bag), "patentFileWrapperDataBag": bag[offset:offset + limit],
                     "requestIdentifier": str(uuid.uuid4())}, {}
