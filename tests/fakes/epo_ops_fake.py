"""A loopback fake of EPO Open Patent Services 3.2: the OAuth token endpoint and published-data search
with biblio (JSON), under `{url}/3.2`.

* `POST /3.2/auth/accesstoken`, HTTP Basic key:secret, form `grant_type=client_credentials` -> `{
  "access_token", "token_type": "BearerToken", "expires_in": "1199", "status": "approved", ...}`; wrong
  credentials -> 401 `{"error": "invalid_client"}`. `tokens_issued` counts them; `expire_tokens()` makes
  every issued token invalid (OPS then answers 400 with an XML fault `invalid_access_token`, or 401 if
  `expired_status=401`).
* `GET /3.2/rest-services/published-data/search/biblio?q=<CQL>&Range=1-25` with `Authorization: Bearer`
  -> `{"ops:world-patent-data": {"ops:biblio-search": {"@total-result-count", "ops:range",
  "ops:search-result": {"exchange-documents": [...]}}}}`; a single document comes as an object, values
  under "$", as OPS's XML-to-JSON mapping does. The CQL understood: `ta=word` joined by `and`,
  `pd within "YYYYMMDD YYYYMMDD"`, `pn=CC` and `cpc=...` alternatives in parentheses. No match -> 404.
* Every answer carries `X-Throttling-Control` (`throttle`, settable) and `X-IndividualQuotaPerHour-Used`;
  `quota_exceeded_next()` answers 403 with `X-Rejection-Reason: IndividualQuotaPerHour`.
"""

from __future__ import annotations

import base64
import re
import threading
from typing import Any

from tests.fakes.openalex_fake import RawBody, Request, SearchFake, words

GREEN = "idle (images=green:200, inpadoc=green:60, other=green:1000, retrieval=green:200, search=green:30)"

# country, number, kind, family, date, title, abstract, applicant, cpc
DOCUMENTS = [
    ("EP", "3000001", "A1", "50001", "20170301", "Door hinge with magnetorheological damping unit",
     "A door hinge has a magnetorheological damper with a coil; a controller sets the coil current from a position "
     "sensor so that the closing speed of the door is limited.", "HINGE WORKS INC", "E05F3/14"),
    ("WO", "2017000001", "A1", "50001", "20170105", "Door hinge with magnetorheological damping unit",
     "A door hinge has a magnetorheological damper with a coil (international application).",
     "HINGE WORKS INC", "E05F3/14"),
    ("US", "9000001", "B2", "50002", "20160405", "Self-closing hinge with magnetorheological damper",
     "A hinge for a door comprises a magnetorheological damper whose coil controls the closing speed of the "
     "door.", "HINGE WORKS INC", "E05F3/14"),
    ("CN", "106000001", "A", "50003", "20161012", "Magnetorheological damper hinge with speed control",
     "The door hinge contains a magnetorheological fluid damper; the coil current is regulated to control the "
     "closing speed.", "SHENZHEN HINGE CO", "F16F9/53"),
    ("EP", "3999999", "A1", "50004", "20220601", "Smart door with magnetorheological damper and camera",
     "A smart door with a magnetorheological damper, a camera and a position sensor.", "FUTURE DOORS GMBH",
     "E05F15/00"),
    ("JP", "2015000001", "A", "50005", "20150101", "Battery cooling structure",
     "A cooling structure for a battery pack.", "BATTERY KK", "H01M10/613"),
]


def _v(text: str) -> dict[str, str]:
    return {"$": text}


def exchange_document(entry: tuple) -> dict[str, Any]:
    country, number, kind, family, date, title, abstract, applicant, cpc = entry
    match = re.match(r"([A-H])(\d\d)([A-Z])(\d+)/(\d+)", cpc)
    classification = {"classification-scheme": {"@office": "EP", "@scheme": "CPCI"}}
    if match:
        classification.update(section=_v(match[1]), **{"class": _v(match[2])}, subclass=_v(match[3]),
                              **{"main-group": _v(match[4])}, subgroup=_v(match[5]))
    return {"exchange-document": {
        "@system": "ops.epo.org", "@family-id": family, "@country": country, "@doc-number": number, "@kind": kind,
        "bibliographic-data": {
            "publication-reference": {"document-id": [
                {"@document-id-type": "docdb", "country": _v(country), "doc-number": _v(number), "kind": _v(kind),
                 "date": _v(date)},
                {"@document-id-type": "epodoc", "doc-number": _v(f"{country}{number}"), "date": _v(date)},
            ]},
            "invention-title": [{"@lang": "en", "$": title}, {"@lang": "de", "$": f"{title} (de)"}],
            "parties": {"applicants": {"applicant": [
                {"@sequence": "1", "@data-format": "epodoc", "applicant-name": {"name": _v(applicant)}},
                {"@sequence": "1", "@data-format": "original", "applicant-name": {"name": _v(applicant.title())}},
            ]}},
            "patent-classifications": {"patent-classification": classification},
        },
        "abstract": {"@lang": "en", "p": _v(abstract)},
    }}


def parse_cql(q: str) -> dict[str, Any]:
    out: dict[str, Any] = {"ta": [], "pd": None, "pn": [], "cpc": []}
    # A hyphenated word is a phrase of its parts (self-closing: self, closing).
    out["ta"] = [part for w in re.findall(r"\bta=([A-Za-z0-9-]+)", q) for part in words(w)]
    within = re.search(r'pd within "(\d{8}) (\d{8})"', q)
    if within:
        out["pd"] = (within[1], within[2])
    out["pn"] = re.findall(r"\bpn=([A-Z]{2})\b", q)
    out["cpc"] = re.findall(r"\bcpc=([A-Z0-9/]+)", q)
    return out


class EpoOpsFake(SearchFake):
    name = "epo_ops"

    def __init__(self, key: str = "ops-key", secret: str = "ops-secret", expired_status: int = 400) -> None:
        self.key, self.secret = key, secret
        self.expired_status = expired_status
        self.throttle = GREEN
        self.tokens_issued = 0
        self._valid: set[str] = set()
        self._quota_faults = 0
        self._token_lock = threading.Lock()
        super().__init__()

    @property
    def base_url(self) -> str:
        return f"{self.url}/3.2"

    def expire_tokens(self) -> None:
        with self._token_lock:
            self._valid.clear()

    def quota_exceeded_next(self, times: int = 1) -> None:
        with self._token_lock:
            self._quota_faults += times

    def searches(self) -> list[Request]:
        return [r for r in self.received if r.path.endswith("/search/biblio")]

    def headers(self) -> dict[str, str]:
        return {"X-Throttling-Control": self.throttle, "X-IndividualQuotaPerHour-Used": str(len(self.received) * 1000)}

    def error(self, status: int, message: str) -> tuple[int, Any, dict[str, str]]:
        fault = (f'<?xml version="1.0" encoding="UTF-8"?><fault xmlns="http://ops.epo.org"><code>SERVER.Error</code>'
                 f"<message>{message}</message></fault>").encode()
        return status, RawBody(fault), self.headers()

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if request.path == "/3.2/auth/accesstoken" and request.method == "POST":
            return self._token(request)
        if request.path == "/3.2/rest-services/published-data/search/biblio" and request.method == "GET":
            return self._search(request)
        return self.error(404, f"no route {request.method} {request.path}")

    def _token(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        expected = "Basic " + base64.b64encode(f"{self.key}:{self.secret}".encode()).decode()
        form = request.body.decode() if isinstance(request.body, bytes) else ""
        if request.headers.get("authorization") != expected:
            return 401, {"error": "invalid_client", "error_description": "Client credentials are invalid"}, {}
        if "grant_type=client_credentials" not in form:
            return 400, {"error": "unsupported_grant_type"}, {}
        with self._token_lock:
            self.tokens_issued += 1
            token = f"ops-token-{self.tokens_issued}"
            self._valid.add(token)
        return 200, {"refresh_token_expires_in": "0", "api_product_list": "[ops-prod]", "organization_name": "test",
                     "token_type": "BearerToken", "issued_at": "1700000000000", "client_id": self.key,
                     "access_token": token, "application_name": "gateway-test", "scope": "core",
                     "expires_in": "1199", "refresh_count": "0", "status": "approved"}, {}

    def _search(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        with self._token_lock:
            valid = token in self._valid
            quota = self._quota_faults > 0
            if quota and valid:
                self._quota_faults -= 1
        if not valid:
            if self.expired_status == 401:
                return 401, RawBody(b"<fault><code>CLIENT.InvalidAccessToken</code></fault>"), {}
            return 400, RawBody(b'<?xml version="1.0"?><fault xmlns="http://ops.epo.org"><code>CLIENT.'
                                b"InvalidAccessToken</code><message>invalid_access_token</message></fault>"), {}
        if quota:
            refusal = RawBody(b"<fault><code>CLIENT.RobotDetected</code><message>Fair use quota exceeded</message>"
                              b"</fault>")
            rejection = {"X-Rejection-Reason": "IndividualQuotaPerHour", "Retry-After": "120"}
            return 403, refusal, {**self.headers(), **rejection}
        cql = parse_cql(request.params.get("q", ""))
        range_ = re.fullmatch(r"(\d+)-(\d+)", request.params.get("Range", "1-25"))
        if not cql["ta"] or not range_ or int(range_[2]) - int(range_[1]) >= 100:
            return self.error(400, "CLIENT.CQL invalid query or range")
        matched = []
        for entry in DOCUMENTS:
            country, date = entry[0], entry[4]
            if cql["pd"] and not cql["pd"][0] <= date <= cql["pd"][1]:
                continue
            if cql["pn"] and country not in cql["pn"]:
                continue
            if cql["cpc"] and not any(entry[8].startswith(c) for c in cql["cpc"]):
                continue
            text = set(words(f"{entry[5]} {entry[6]}"))
            if all(w in text for w in cql["ta"]):  # ta=a and ta=b: every word in title or abstract
                matched.append(entry)
        if not matched:
            return 404, RawBody(b"<fault><code>SERVER.EntityNotFound</code><message>No results found</message>"
                                b"</fault>"), self.headers()
        begin, end = int(range_[1]), int(range_[2])
        page = [exchange_document(e) for e in matched[begin - 1:end]]
        docs: Any = page[0] if len(page) == 1 else page  # OPS: one item is an object, not a list
        return 200, {"ops:world-patent-data": {
            "@xmlns": {"ops": "http://ops.epo.org"},
            "ops:meta": {"@name": "elapsed-time", "@value": "12"},
            "ops:biblio-search": {
                "@total-result-count": str(len(matched)),
                "ops:query": {"@syntax": "CQL", "$": request.params.get("q", "")},
                "ops:range": {"@begin": str(begin), "@end": str(min(end, len(matched)))},
                "ops:search-result": {"exchange-documents": docs},
            }}}, self.headers()
