"""EPO Open Patent Services 3.2: worldwide (DOCDB) published-data search with bibliographic data and
abstracts in one request.

* Token: `POST {base}/auth/accesstoken` with HTTP Basic (consumer key : secret from
  developers.epo.org) and `grant_type=client_credentials`; answer `{"access_token", "expires_in":
  "1199", "token_type": "BearerToken", "status": "approved"}`. The token lives ~20 minutes; it is kept
  in the shared Django cache so every process uses one, and refreshed by one process at a time (a
  cache `add` is the lock). A search answered 401 (or 400 `invalid_access_token`) gets one refresh.
* Search: `GET {base}/rest-services/published-data/search/biblio?q=<CQL>&Range=1-25` with
  `Authorization: Bearer` and `Accept: application/json`. CQL here: `ta=word and ta=word` (title or
  abstract), `pd within "YYYYMMDD YYYYMMDD"`, `cpc=A47B`, `pn=EP`. Answer
  `{"ops:world-patent-data": {"ops:biblio-search": {"@total-result-count": "N", "ops:range":
  {"@begin", "@end"}, "ops:search-result": {"exchange-documents": [{"exchange-document": {...}}]}}}}`
  (a single item comes as an object, not a list; values sit under "$"). No match is a 404.
* Fair use: every answer carries `X-Throttling-Control: busy (images=green:100, inpadoc=green:45,
  other=green:1000, retrieval=green:100, search=yellow:15)` -- the system state and, per service, a
  colour and the requests per minute allowed. Yellow/red (or an overloaded system) pause the next
  request; black -- and a 403 quota refusal (`X-Rejection-Reason: IndividualQuotaPerHour`,
  `RegisteredQuotaPerWeek` ...) -- park the source in the shared cache for Retry-After (else
  EPO_OPS_BLOCK_SECONDS): parked, nothing is sent and nothing is charged.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.core.cache import cache

from llm.search.common import Attempts, External, Hit, SearchError, normalize_patent_number, with_retries

SERVICE = "epo_ops"
PAGE_LIMIT = 100  # OPS serves at most 100 results a request (Range), 2000 in all
MAX_WORDS = 8
_THROTTLE = re.compile(r"^\s*(?P<state>[a-z]+)\s*(?:\((?P<services>[^)]*)\))?", re.IGNORECASE)
_SERVICE_STATE = re.compile(r"(?P<name>[a-z]+)\s*=\s*(?P<colour>[a-z]+)\s*:\s*(?P<quota>\d+)", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def configured() -> bool:
    return bool(settings.EPO_OPS_KEY and settings.EPO_OPS_SECRET)


def _key_id() -> str:
    # Per consumer key: new credentials never reuse the old key's token.
    return hashlib.sha256(settings.EPO_OPS_KEY.encode()).hexdigest()[:16]


def token_cache_key() -> str:
    return f"search:epo_ops:token:{_key_id()}"


def block_cache_key() -> str:
    return f"search:epo_ops:blocked:{_key_id()}"


@dataclass
class Throttle:
    state: str  # idle | busy | overloaded
    colour: str  # the search service's: green | yellow | red | black
    per_minute: int | None


def parse_throttling(header: str | None) -> Throttle | None:
    match = _THROTTLE.match(header or "")
    if not match:
        return None
    services = {m["name"].lower(): (m["colour"].lower(), int(m["quota"]))
                for m in _SERVICE_STATE.finditer(match["services"] or "")}
    colour, quota = services.get("search", ("green", None))
    return Throttle(state=match["state"].lower(), colour=colour, per_minute=quota)


def cql(query: str, *, date_cutoff: dt.date | None, jurisdictions: list[str] | None = None,
        cpc: list[str] | None = None) -> str:
    words = [w for w in _WORD.findall(query)][:MAX_WORDS] or ["patent"]
    parts = [" and ".join(f"ta={w}" for w in words)]
    if date_cutoff is not None:
        parts.append(f'pd within "17900101 {date_cutoff.strftime("%Y%m%d")}"')
    if jurisdictions:
        parts.append("(" + " or ".join(f"pn={j}" for j in jurisdictions) + ")")
    if cpc:
        parts.append("(" + " or ".join(f"cpc={c.replace(' ', '')}" for c in cpc) + ")")
    return " and ".join(f"({p})" if " or " in p and not p.startswith("(") else p for p in parts)


# ---- parsing OPS's JSON (XML mapped: attributes as "@name", text as "$") ----------------------------

def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("$")
    return value.strip() if isinstance(value, str) else ""


def _english_first(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda i: 0 if isinstance(i, dict) and i.get("@lang") == "en" else 1)


def _abstract(value: Any) -> str:
    for abstract in _english_first(_list(value)):
        if isinstance(abstract, dict):
            text = " ".join(_text(p) for p in _list(abstract.get("p")) if _text(p))
            if text:
                return text
    return ""


def _cpc(classifications: Any) -> list[str]:
    out: list[str] = []
    for c in _list(classifications):
        if not isinstance(c, dict):
            continue
        scheme = c.get("classification-scheme")
        if isinstance(scheme, dict) and scheme.get("@scheme") not in (None, "CPCI", "CPC", "CPCNO"):
            continue
        section, klass, sub = _text(c.get("section")), _text(c.get("class")), _text(c.get("subclass"))
        main, group = _text(c.get("main-group")), _text(c.get("subgroup"))
        if section and klass and sub:
            code = f"{section}{klass}{sub}" + (f"{main}/{group}" if main and group else "")
            if code not in out:
                out.append(code)
    return out


def parse_document(wrapper: Any) -> Hit | None:
    doc = wrapper.get("exchange-document") if isinstance(wrapper, dict) else None
    if isinstance(doc, list):
        doc = doc[0] if doc else None
    if not isinstance(doc, dict):
        return None
    country, number, kind = (str(doc.get(k) or "").strip() for k in ("@country", "@doc-number", "@kind"))
    biblio = doc.get("bibliographic-data") if isinstance(doc.get("bibliographic-data"), dict) else {}
    if not country or not number:
        return None
    titles = [_text(t) for t in _english_first(_list(biblio.get("invention-title"))) if _text(t)]
    if not titles:
        return None
    date = ""
    reference = biblio.get("publication-reference") if isinstance(biblio.get("publication-reference"), dict) else {}
    for ident in _list(reference.get("document-id")):
        if isinstance(ident, dict) and ident.get("@document-id-type") == "docdb" and _text(ident.get("date")):
            raw = _text(ident.get("date"))
            date = f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 and raw.isdigit() else ""
    parties = biblio.get("parties") if isinstance(biblio.get("parties"), dict) else {}
    applicants_node = parties.get("applicants") if isinstance(parties.get("applicants"), dict) else {}
    applicants: list[str] = []
    for applicant in _list(applicants_node.get("applicant")):
        if isinstance(applicant, dict) and applicant.get("@data-format", "epodoc") == "epodoc":
            name = applicant.get("applicant-name")
            name = _text(name.get("name")) if isinstance(name, dict) else ""
            if name and name not in applicants:
                applicants.append(name)
    classifications = biblio.get("patent-classifications")
    cpc = _cpc(classifications.get("patent-classification") if isinstance(classifications, dict) else None)
    publication = f"{country}{number}{kind}"
    return Hit(source=SERVICE, identifier=publication, title=titles[0],
               year=int(date[:4]) if date else None, abstract=_abstract(doc.get("abstract")),
               url=f"https://worldwide.espacenet.com/patent/search?q=pn%3D{publication}",
               patent_number=normalize_patent_number(f"{country}{number}"), publication_number=publication,
               kind=kind, date=date, cpc=cpc, applicants=applicants,
               family_id=str(doc.get("@family-id") or "").strip(), native_id=f"{country}.{number}.{kind}")


def parse_search(answer: Any) -> tuple[int, list[Hit]]:
    root = answer.get("ops:world-patent-data") if isinstance(answer, dict) else None
    search = root.get("ops:biblio-search") if isinstance(root, dict) else None
    if not isinstance(search, dict):
        raise SearchError("epo_ops answered without 'ops:biblio-search'", kind="bad_response", transient=False)
    try:
        total = int(str(search.get("@total-result-count", "0")))
    except ValueError:
        total = 0
    result = search.get("ops:search-result")
    documents = _list(result.get("exchange-documents")) if isinstance(result, dict) else []
    return total, [h for h in (parse_document(d) for d in documents) if h is not None]


class EpoOpsClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.base_url = settings.EPO_OPS_BASE_URL.rstrip("/")
        self.pause = 0.0  # before the next request, as the last throttling header asked
        self.throttle: Throttle | None = None
        self.quota_used: dict[str, str] = {}
        self._parking: tuple[float | None, str] | None = None  # written to the shared cache after the request

    # ---- fair use -------------------------------------------------------------------------------

    def observe(self, response: httpx.Response) -> None:
        throttle = parse_throttling(response.headers.get("X-Throttling-Control"))
        self.quota_used = {k: v for k, v in response.headers.items()
                           if "quota" in k.lower() and k.lower() != "x-rejection-reason"}
        if throttle is None:
            return
        self.throttle = throttle
        if throttle.colour == "black":
            self._parking = (None, f"search service is black ({throttle.state})")
        elif throttle.colour in ("yellow", "red") or throttle.state == "overloaded":
            step = settings.EPO_OPS_THROTTLE_PAUSE_SECONDS
            self.pause = step * (2 if throttle.colour == "red" or throttle.state == "overloaded" else 1)
        else:
            self.pause = 0.0

    async def _park(self) -> None:
        if self._parking is None:
            return
        seconds, reason = self._parking
        self._parking = None
        seconds = seconds if seconds is not None else settings.EPO_OPS_BLOCK_SECONDS
        if seconds > 0:
            await cache.aset(block_cache_key(), {"until": time.time() + seconds, "reason": reason},
                             timeout=int(seconds) + 1)

    async def _check_parked(self) -> None:
        blocked = await cache.aget(block_cache_key())
        if isinstance(blocked, dict) and blocked.get("until", 0) > time.time():
            left = int(blocked["until"] - time.time()) + 1
            raise SearchError(f"epo_ops is backing off ({blocked.get('reason', 'fair use')}); "
                              f"not sent, about {left} s left", kind="throttled", transient=False, sent=False)

    # ---- the token ------------------------------------------------------------------------------

    async def _fetch_token(self, external: External, attempts: Attempts) -> str:
        basic = base64.b64encode(f"{settings.EPO_OPS_KEY}:{settings.EPO_OPS_SECRET}".encode()).decode()

        def build() -> httpx.Request:
            return self.client.build_request(
                "POST", f"{self.base_url}/auth/accesstoken", data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"})

        try:
            answer = await with_retries(external, SERVICE, build, self.client, attempts, kind="token")
        except SearchError as error:
            if error.kind in ("http_400", "http_401", "http_403"):
                raise SearchError("epo_ops refused the consumer key/secret (token request)", kind="bad_credentials",
                                  transient=False) from None
            raise
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise SearchError("epo_ops token answer has no access_token", kind="bad_response", transient=False)
        try:
            lifetime = int(str(answer.get("expires_in", "1199")))
        except ValueError:
            lifetime = 1199
        await cache.aset(token_cache_key(), token, timeout=max(30, lifetime - 60))
        return token

    async def token(self, external: External, attempts: Attempts, *, stale: str | None = None) -> str:
        """The shared token; `stale` is one OPS just refused (refresh it, once, in one process)."""
        current = await cache.aget(token_cache_key())
        if isinstance(current, str) and current and current != stale:
            return current
        lock = token_cache_key() + ":refreshing"
        if await cache.aadd(lock, "1", timeout=int(settings.SEARCH_TIMEOUT_SECONDS) + 5):
            try:
                current = await cache.aget(token_cache_key())
                if isinstance(current, str) and current and current != stale:
                    return current  # another process refreshed it between our two looks
                return await self._fetch_token(external, attempts)
            finally:
                await cache.adelete(lock)
        # Another process is fetching it: wait for its token rather than fetching a second one.
        deadline = time.monotonic() + settings.SEARCH_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            current = await cache.aget(token_cache_key())
            if isinstance(current, str) and current and current != stale:
                return current
            if await cache.aget(lock) is None:
                break
        return await self._fetch_token(external, attempts)

    # ---- search ---------------------------------------------------------------------------------

    async def search(self, query: str, *, size: int, date_cutoff: dt.date | None, external: External,
                     attempts: Attempts, jurisdictions: list[str] | None = None,
                     cpc: list[str] | None = None) -> list[Hit]:
        await self._check_parked()
        expression = cql(query, date_cutoff=date_cutoff, jurisdictions=jurisdictions, cpc=cpc)
        state = {"token": await self.token(external, attempts)}
        hits: list[Hit] = []
        begin = 1
        while len(hits) < size:
            end = begin + min(PAGE_LIMIT, size - len(hits)) - 1
            if self.pause:
                await asyncio.sleep(self.pause)
            await self._check_parked()

            def build(begin: int = begin, end: int = end) -> httpx.Request:
                return self.client.build_request(
                    "GET", f"{self.base_url}/rest-services/published-data/search/biblio",
                    params={"q": expression, "Range": f"{begin}-{end}"},
                    headers={"Authorization": f"Bearer {state['token']}", "Accept": "application/json"})

            async def repair(error: SearchError) -> bool:
                body = error.response.text if error.response is not None else ""
                expired = error.kind == "http_401" or (
                    error.kind == "http_400" and re.search(r"invalid_?access_?token", body, re.IGNORECASE))
                if not expired:
                    return False
                state["token"] = await self.token(external, attempts, stale=state["token"])
                return True

            try:
                answer = await with_retries(external, SERVICE, build, self.client, attempts, kind="search",
                                            on_response=self.observe, on_error=repair)
            except SearchError as error:
                await self._park()
                if error.kind == "http_404":  # SERVER.EntityNotFound: no match
                    break
                if error.kind == "http_403" and error.response is not None:
                    reason = error.response.headers.get("X-Rejection-Reason", "")
                    self._parking = (error.retry_after, f"403 {reason or 'fair use'}")
                    await self._park()
                    raise SearchError(f"epo_ops refused the request: {reason or 'quota / fair use'} (HTTP 403)",
                                      kind="quota", transient=False) from None
                if error.kind == "http_401":
                    raise SearchError("epo_ops refused the access token again after a refresh", kind="bad_credentials",
                                      transient=False) from None
                raise
            await self._park()
            total, page = parse_search(answer)
            hits.extend(page)
            begin = end + 1
            if not page or begin > total:
                break
        for hit in hits:
            hit.found_by.append(query)
        return hits[:size]
