"""What the search clients share: the hit shape, errors, retries over counted requests, de-duplication.

Every request a client sends goes through an `External` callable (the adapter's `run.external`), so
it is counted against `max_api_calls` when it is sent. A request that could not be sent at all
(connection refused, no TCP connection within the timeout) raises `NotSent`: the caller refunds it,
since a call that never happened is never charged.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from django.conf import settings

T = TypeVar("T")
# (service, request kind -- priced per kind in catalog.SearchSourcePrice --, the request)
External = Callable[[str, str, Callable[[], Awaitable[Any]]], Awaitable[Any]]

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class Hit:
    """One candidate from a search service, normalised."""

    source: str  # "openalex" | "uspto_odp" | "epo_ops"
    identifier: str  # a DOI (openalex, when it has one; else the OpenAlex id) or the publication number
    title: str
    year: int | None
    abstract: str
    url: str
    doi: str = ""
    patent_number: str = ""  # without kind code, for de-duplication ("US9000001", "EP1000000")
    publication_number: str = ""  # with kind code when known ("US9000001B2", "EP1000000A1")
    kind: str = ""
    date: str = ""  # ISO publication (or filing) date
    cpc: list[str] = field(default_factory=list)
    applicants: list[str] = field(default_factory=list)
    family_id: str = ""  # DOCDB simple family (OPS): the same family is one reference
    native_id: str = ""  # the service's own id (OpenAlex W-id, ODP application number, OPS docdb id)
    found_by: list[str] = field(default_factory=list)  # the queries that returned it
    sources: list[str] = field(default_factory=list)  # every source that returned it (after merging)
    cached: bool = False  # served from the shared search cache (no request, no fee)

    def to_cache(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("cached", None)
        return data

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> Hit:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, cached=True)


class SearchError(Exception):
    """A search request failed. `transient` errors are retried; `sent` says whether it reached the wire."""

    def __init__(self, message: str, *, kind: str, transient: bool, sent: bool = True,
                 retry_after: float | None = None, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.sent = sent
        self.retry_after = retry_after
        self.response = response  # the service's answer, for clients that read its headers


class NotSent(SearchError):
    """The request never left this machine (connection refused / not established)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="unreachable", transient=True, sent=False)


@dataclass
class Attempts:
    """What one logical search cost: attempts sent (charged) and attempts that never went out."""

    sent: int = 0
    not_sent: int = 0


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


async def send_once(client: httpx.AsyncClient, request: httpx.Request, service: str) -> httpx.Response:
    """Send one request with an overall timeout; map failures to SearchError."""
    timeout = settings.SEARCH_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(timeout):
            response = await client.send(request)
            await response.aread()
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        raise NotSent(f"{service} unreachable: {type(error).__name__}") from None
    except (TimeoutError, httpx.TimeoutException):
        raise SearchError(f"{service} did not answer within {timeout:g} s", kind="timeout", transient=True) from None
    except httpx.TransportError as error:
        raise SearchError(f"{service} connection failed: {type(error).__name__}", kind="network",
                          transient=True) from None
    if response.status_code >= 400:
        transient = response.status_code in TRANSIENT_STATUSES
        raise SearchError(f"{service} answered HTTP {response.status_code}", kind=f"http_{response.status_code}",
                          transient=transient, retry_after=retry_after_seconds(response), response=response)
    return response


async def with_retries(external: External, service: str, build: Callable[[], httpx.Request],
                       client: httpx.AsyncClient, attempts: Attempts, *, kind: str = "search",
                       on_response: Callable[[httpx.Response], None] | None = None,
                       on_error: Callable[[SearchError], Awaitable[bool]] | None = None) -> Any:
    """Send a request, retrying transient failures up to SEARCH_RETRIES times; returns the parsed JSON.

    Each attempt goes through `external` (counted and priced as `kind` when sent). `on_response`
    sees every answer (throttling headers); `on_error` may repair a failure (a refreshed token) and
    return True for one more attempt. BudgetExhausted from `external` propagates unchanged: the
    caller stops and returns what it has."""
    repaired = False
    retries = max(0, int(settings.SEARCH_RETRIES))
    last: SearchError | None = None
    for attempt in range(retries + 1):
        if attempt:
            pause = settings.SEARCH_BACKOFF_SECONDS * (2 ** (attempt - 1))
            if last is not None and last.retry_after is not None:
                pause = max(pause, min(last.retry_after, settings.SEARCH_TIMEOUT_SECONDS))
            if pause:
                await asyncio.sleep(pause)
        try:
            response = await external(service, kind, lambda: send_once(client, build(), service))
        except NotSent as error:
            attempts.not_sent += 1
            last = error
            continue
        except SearchError as error:
            attempts.sent += 1
            last = error
            if on_response is not None and error.response is not None:
                on_response(error.response)
            if on_error is not None and not repaired and await on_error(error):
                repaired = True
                return await with_retries(external, service, build, client, attempts, kind=kind,
                                          on_response=on_response, on_error=None)
            if not error.transient:
                raise
            continue
        attempts.sent += 1
        if on_response is not None:
            on_response(response)
        try:
            return response.json()
        except ValueError:
            raise SearchError(f"{service} answered with a body that is not JSON", kind="bad_response",
                              transient=False) from None
    assert last is not None
    raise last


# ---- normalisation and de-duplication ---------------------------------------------------------------

_DOI_PREFIX = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)", re.IGNORECASE)
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize_doi(doi: str | None) -> str:
    return _DOI_PREFIX.sub("", (doi or "").strip()).lower()


def normalize_title(title: str | None) -> str:
    text = unicodedata.normalize("NFKD", title or "").encode("ascii", "ignore").decode().lower()
    return _NON_WORD.sub(" ", text).strip()


def normalize_patent_number(number: str | None) -> str:
    """"US 10,000,000 B2" / "10000000" -> "US10000000" (kind codes and separators dropped); a US
    pre-grant publication "US20090108066A1" -> "US2009108066", its DOCDB form, so ODP's and OPS's
    numbers for one document compare equal."""
    text = re.sub(r"[\s,./-]", "", (number or "").upper())
    text = re.sub(r"(?<=\d)[A-Z]\d?$", "", text)  # kind code, e.g. B2
    if text and not text[:2].isalpha():
        text = "US" + text
    pregrant = re.fullmatch(r"US((?:19|20)\d\d)0(\d{6})", text)
    if pregrant:
        text = f"US{pregrant.group(1)}{pregrant.group(2)}"
    return text


def dedupe(hits: list[Hit]) -> list[Hit]:
    """Keep the first of each DOI / patent number / normalised title, in order; merge `found_by`."""
    kept: list[Hit] = []
    seen: dict[str, Hit] = {}
    for hit in hits:
        keys = [k for k in (
            "doi:" + normalize_doi(hit.doi) if hit.doi else "",
            "pat:" + normalize_patent_number(hit.patent_number) if hit.patent_number else "",
            "family:" + hit.family_id if hit.family_id else "",
            "id:" + hit.source + ":" + hit.native_id if hit.native_id else "",
            "title:" + normalize_title(hit.title) if normalize_title(hit.title) else "",
        ) if k]
        first = next((seen[k] for k in keys if k in seen), None)
        if first is not None:
            if hit.source not in first.sources:
                first.sources.append(hit.source)
            first.found_by.extend(q for q in hit.found_by if q not in first.found_by)
            if not first.abstract and hit.abstract:
                first.abstract = hit.abstract
            for name in ("cpc", "applicants"):
                if not getattr(first, name) and getattr(hit, name):
                    setattr(first, name, list(getattr(hit, name)))
            first.cached = first.cached and hit.cached
            for key in keys:
                seen.setdefault(key, first)
            continue
        if hit.source not in hit.sources:
            hit.sources.insert(0, hit.source)
        kept.append(hit)
        for key in keys:
            seen[key] = hit
    return kept


def interleave(groups: list[list[Hit]]) -> list[Hit]:
    """Round-robin over result lists (each in the service's own relevance order)."""
    out: list[Hit] = []
    for index in range(max((len(g) for g in groups), default=0)):
        out.extend(g[index] for g in groups if index < len(g))
    return out


_STOP = frozenset(
    "a an and are as at be been by can for from has have in into is it its of on or that the their then there "
    "these this to was were which with wherein said least one more such each other than between first second "
    "comprising comprises include includes including based using used use method system apparatus device "
    "invention present according plurality configured whose set so via may when where while being not also about "
    "over under within without upon thereof herein those them they what how any all some very well like only".split()
)
_WORD = re.compile(r"[a-z0-9][a-z0-9\-]*[a-z0-9]|[a-z0-9]")


def terms(text: str) -> list[str]:
    """Content words, lower-cased, in order of appearance (duplicates kept)."""
    return [w for w in _WORD.findall((text or "").lower()) if len(w) > 2 and w not in _STOP]


def lexical_score(query_terms: set[str], text: str) -> float:
    """Share of the description's distinct content words found in the text (0..1)."""
    if not query_terms:
        return 0.0
    found = query_terms & set(terms(text))
    return round(len(found) / len(query_terms), 4)


def snippet(text: str, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def key_terms(text: str, limit: int = 20) -> list[str]:
    """The description's most frequent content words (ties: first appearance), at most `limit`."""
    words = terms(text)
    order = {w: i for i, w in reversed(list(enumerate(words)))}
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], order[w]))[:limit]
