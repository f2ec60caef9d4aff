"""Prior-art search (LLM1_PRIOR_ART): description -> LLM queries -> USPTO ODP + EPO OPS + OpenAlex ->
merge, de-duplicate (the same document or DOCDB family once), keep `retrieval_top_k` -> LLM re-rank
with a short rationale per item -> a claim chart (llm/adapters/claim_chart.py).

Limits and cost: every search request sent counts against `max_api_calls` (one call is kept back for
the re-rank) and adds its price (catalog.SearchSourcePrice) to the call's cost; answers are cached in
the shared cache (llm/search/cache.py), and a cached answer sends nothing and costs nothing. When the
budget runs out, or a source fails, is parked by its fair-use throttling or is too slow, the run
returns what it found so far with a note per source. A request that never left this machine is not
charged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings

from catalog.search_prices import dearest_request_price, search_price, search_price_table
from gateway_project.errors import BadRequest
from llm import calls
from llm.adapters.base import AdapterRun, BudgetExhausted, TaskAdapter
from llm.adapters.claim_chart import claim_chart, claim_elements
from llm.db import db_step
from llm.search import epo_ops, openalex, uspto_odp
from llm.search.cache import cached_hits, store_hits
from llm.search.common import (
    Attempts,
    Hit,
    NotSent,
    SearchError,
    dedupe,
    interleave,
    key_terms,
    lexical_score,
    snippet,
    terms,
)
from llm.tokenizer import text_tokens

logger = logging.getLogger("gateway.prior_art")

DEFAULT_TOP_K = 10  # when no retrieval_top_k rule applies
MAX_QUERIES = 4
MAX_QUERY_CHARS = 200
MAX_INPUT_CHARS = 50_000
ALLOWED_FIELDS = {"description", "claims", "date_cutoff", "jurisdictions", "cpc", "max_results", "model",
                  "max_tokens"}
_CPC = re.compile(r"^[A-HY]\d{2}[A-Z](?:\d{1,4}(?:/\d{1,6})?)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_JURISDICTION = re.compile(r"^[A-Z]{2}$")

QUERIES_SYSTEM = (
    "You are a patent search professional. Turn the invention below into prior-art search queries for "
    "a scholarly-literature index and a patent full-text index. Answer with a JSON array of 2 to "
    f"{MAX_QUERIES} short keyword queries (3 to 6 distinctive technical words each, no boolean operators), "
    "and nothing else.\noffline-template: prior_art_queries"
)
FEATURES_SYSTEM = (
    "You are a patent attorney. List the key technical features of the invention below, the elements a "
    "claim chart would compare against prior art: a JSON array of 2 to 8 short phrases (each one feature, "
    "at most 25 words), and nothing else.\noffline-template: prior_art_features"
)
RERANK_SYSTEM = (
    "You are a patent examiner. Rank the candidate documents by how relevant they are as prior art for "
    "the invention. Answer with JSON only, in this shape: "
    '{"ranking": [{"id": "C1", "score": 0.0, "rationale": "..."}]} -- every candidate once, most relevant '
    "first, score between 0 and 1, rationale at most 30 words naming the overlapping features."
    "\noffline-template: prior_art_rerank"
)


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_input")


@dataclass
class PriorArtInput:
    text: str
    date_cutoff: dt.date | None = None
    jurisdictions: list[str] = field(default_factory=list)
    cpc: list[str] = field(default_factory=list)
    max_results: int | None = None
    claims: str = ""
    description: str = ""


@dataclass
class SearchRecord:
    service: str
    query: str
    status: str = "pending"  # ok | cached | failed | skipped | stopped
    results: int = 0
    attempts: int = 0
    detail: str = ""

    def public(self) -> dict[str, Any]:
        row: dict[str, Any] = {"service": self.service, "query": self.query, "status": self.status,
                               "results": self.results, "attempts": self.attempts}
        if self.detail:
            row["detail"] = self.detail
        return row


# ---- parsing the LLM's answers ----------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_candidates(text: str) -> list[Any]:
    """Every JSON value we can find in a model answer: the whole text, fenced blocks, the outermost
    [...] / {...} spans."""
    found: list[Any] = []
    sources = [text, *_FENCE.findall(text)]
    for source in sources:
        source = source.strip()
        for opener, closer in (("{", "}"), ("[", "]")):
            start, end = source.find(opener), source.rfind(closer)
            spans = [source] + ([source[start:end + 1]] if 0 <= start < end else [])
            for span in spans:
                try:
                    found.append(json.loads(span))
                except ValueError:
                    continue
    return found


def parse_queries(text: str) -> list[str]:
    for value in _json_candidates(text):
        if isinstance(value, dict):
            value = value.get("queries")
        if not isinstance(value, list):
            continue
        out: list[str] = []
        for item in value:
            if isinstance(item, dict):
                item = item.get("query")
            if isinstance(item, str):
                query = " ".join(item.split())[:MAX_QUERY_CHARS].strip()
                if query and query.lower() not in {q.lower() for q in out}:
                    out.append(query)
        if out:
            return out[:MAX_QUERIES]
    return []


def parse_features(text: str) -> list[str]:
    for value in _json_candidates(text):
        if isinstance(value, dict):
            value = value.get("features")
        if isinstance(value, list):
            out = [" ".join(v.split())[:300] for v in value if isinstance(v, str) and terms(v)]
            if out:
                return list(dict.fromkeys(out))[:12]
    return []


def fallback_queries(description: str) -> list[str]:
    words = key_terms(description, limit=8)
    groups = [words[0:4], words[4:8]]
    return [" ".join(g) for g in groups if len(g) >= 2] or ([" ".join(words)] if words else [])


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        score = float(value)
    except ValueError:
        return None
    if score != score or score < 0:  # NaN / negative
        return None
    if score > 1:
        score = score / 100 if score <= 100 else None  # a 0..100 scale
    return None if score is None else round(score, 4)


_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_ranking(text: str, known: set[str]) -> list[tuple[str, float | None, str]]:
    """(id, score, rationale) for the known candidate ids, in the model's order. Salvages complete
    entries from a truncated answer."""
    entries: list[Any] = []
    for value in _json_candidates(text):
        if isinstance(value, dict):
            value = value.get("ranking") or value.get("results") or value.get("candidates")
        if isinstance(value, list):
            entries = value
            break
    if not entries:  # e.g. cut off at max_tokens: take the complete {...} objects
        for span in _OBJECT.findall(text):
            try:
                entries.append(json.loads(span))
            except ValueError:
                continue
    out: list[tuple[str, float | None, str]] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        ident = entry.get("id")
        ident = ident.strip().upper() if isinstance(ident, str) else f"C{ident}" if isinstance(ident, int) else ""
        ident = f"C{ident}" if ident.isdigit() else ident.strip("[]")
        if ident not in known or ident in seen:
            continue
        seen.add(ident)
        rationale = entry.get("rationale") if isinstance(entry.get("rationale"), str) else ""
        out.append((ident, _score(entry.get("score")), " ".join(rationale.split())[:400]))
    return out


# ---- the adapter ------------------------------------------------------------------------------------

class PriorArtAdapter(TaskAdapter):
    task_code = "LLM1_PRIOR_ART"
    model_classes = ("BASE_S", "BASE_M")
    policy_keys = ("max_tokens_in", "max_tokens_out", "max_api_calls", "retrieval_top_k")
    steps_key = None
    fixed_steps = 3  # query generation + re-rank + (without claims) the disclosure's features

    def parse(self, payload: Any) -> PriorArtInput:
        if not isinstance(payload, dict):
            raise _bad("The body must be a JSON object with 'description' (or 'claims').")
        unknown = sorted(set(payload) - ALLOWED_FIELDS)
        if unknown:
            raise _bad(f"Unknown field(s): {', '.join(unknown)}. Allowed: {', '.join(sorted(ALLOWED_FIELDS))}.")
        parts = []
        for name in ("description", "claims"):
            value = payload.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise _bad(f"'{name}' must be a string.")
            if value.strip():
                parts.append(value.strip() if name == "description" else "Claims:\n" + value.strip())
        if not parts:
            raise _bad("'description' (or 'claims') is required: a non-empty text describing the invention.")
        text = "\n\n".join(parts)
        if len(text) > MAX_INPUT_CHARS:
            raise _bad(f"The description is too long ({len(text)} characters; at most {MAX_INPUT_CHARS}).")
        if not terms(text):
            raise _bad("The description has no searchable words.")
        parsed = PriorArtInput(text=text, claims=(payload.get("claims") or "").strip(),
                               description=(payload.get("description") or "").strip())
        cpc = payload.get("cpc")
        if cpc is not None:
            if not isinstance(cpc, list) or not cpc or len(cpc) > 10:
                raise _bad("'cpc' must be a non-empty list of at most 10 CPC symbols, e.g. [\"E05F3/14\", \"F16F9\"].")
            for code in cpc:
                symbol = code.replace(" ", "").upper() if isinstance(code, str) else ""
                if not _CPC.match(symbol):
                    raise _bad(f"'cpc' holds an invalid CPC symbol: {code!r} (e.g. E05F3/14, F16F9, A47B).")
                if symbol not in parsed.cpc:
                    parsed.cpc.append(symbol)
        cutoff = payload.get("date_cutoff")
        if cutoff is not None:
            if not isinstance(cutoff, str) or not _DATE.match(cutoff):
                raise _bad("'date_cutoff' must be a date as 'YYYY-MM-DD'.")
            try:
                parsed.date_cutoff = dt.date.fromisoformat(cutoff)
            except ValueError:
                raise _bad(f"'date_cutoff' is not a valid date: {cutoff}.") from None
        jurisdictions = payload.get("jurisdictions")
        if jurisdictions is not None:
            if not isinstance(jurisdictions, list) or not jurisdictions or len(jurisdictions) > 20:
                raise _bad("'jurisdictions' must be a non-empty list of country/office codes, e.g. [\"US\", \"EP\"].")
            codes: list[str] = []
            for code in jurisdictions:
                if not isinstance(code, str) or not _JURISDICTION.match(code.strip().upper()):
                    raise _bad(f"'jurisdictions' holds an invalid code: {code!r} (two letters, e.g. US, EP, WO).")
                if code.strip().upper() not in codes:
                    codes.append(code.strip().upper())
            parsed.jurisdictions = codes
        max_results = payload.get("max_results")
        if max_results is not None:
            if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 1000:
                raise _bad("'max_results' must be an integer between 1 and 1000.")
            parsed.max_results = max_results
        return parsed

    def input_text(self, parsed: PriorArtInput) -> str:
        return parsed.text

    def api_call_fee_micro_usd(self, parsed: PriorArtInput) -> int:
        return dearest_request_price(search_price_table(), [s for s, _ in self._configured()])

    async def run(self, run: AdapterRun, parsed: PriorArtInput) -> dict[str, Any]:
        top_k = max(1, run.limits.get("retrieval_top_k", DEFAULT_TOP_K))
        wanted = parsed.max_results or top_k
        if wanted > top_k:
            run.notes.append(f"max_results {wanted} is above retrieval_top_k = {top_k}; returning at most {top_k}.")
            wanted = top_k

        # 1. Queries.
        answer = await run.llm([{"role": "system", "content": QUERIES_SYSTEM},
                                {"role": "user", "content": f"Invention:\n<<<\n{parsed.text}\n>>>"}],
                               step="queries", max_tokens=300)
        queries = parse_queries(answer)
        if not queries:
            queries = fallback_queries(parsed.text)
            run.notes.append("The model's search queries were unusable; keyword queries from the description were "
                             "used instead.")
        run.emit({"event": "queries", "queries": queries})

        # 2. Searches.
        records, candidates = await self._search(run, parsed, queries, top_k)

        # 3. Re-rank.
        items = await self._rank(run, parsed, candidates, wanted) if candidates else []
        if not candidates:
            run.notes.append("No candidates were found; nothing to re-rank.")

        # 4. Claim chart over the references kept: the claims' elements, else the LLM's features.
        features = [] if parsed.claims else await self._features(run, parsed)
        elements = claim_elements(parsed.claims, parsed.description or parsed.text, features=features)
        chart = claim_chart(elements, items)
        for item in items:
            item.pop("_text", None)
        sources = self._source_notes(records)
        return {"items": items, "claim_chart": chart, "queries": queries, "sources": sources,
                "searches": [r.public() for r in records],
                "cached_hits": sum(1 for i in items if i["cached"])}

    async def _features(self, run: AdapterRun, parsed: PriorArtInput) -> list[str]:
        try:
            answer = await run.llm([{"role": "system", "content": FEATURES_SYSTEM},
                                    {"role": "user", "content": f"Invention:\n<<<\n{parsed.text}\n>>>"}],
                                   step="features", max_tokens=400)
        except BudgetExhausted as stop:
            run.notes.append(f"No API call left to extract the disclosure's features ({stop.key} = {stop.limit}); "
                             "the claim chart uses its sentences instead.")
            return []
        except calls.AllCandidatesFailed as failure:
            run.notes.append(f"The feature extraction failed ({failure}); the claim chart uses the disclosure's "
                             "sentences instead.")
            return []
        found = parse_features(answer)
        if not found:
            run.notes.append("The model's feature list was unusable; the claim chart uses the disclosure's "
                             "sentences instead.")
        return found

    # ---- searching ----------------------------------------------------------------------------------

    @staticmethod
    def _configured() -> list[tuple[str, bool]]:
        """(source, configured) in search order: patents first, then literature."""
        return [("uspto_odp", uspto_odp.configured()), ("epo_ops", epo_ops.configured()), ("openalex", True)]

    def _services(self, run: AdapterRun, parsed: PriorArtInput) -> list[str]:
        services: list[str] = []
        for name, configured in self._configured():
            if not configured:
                hint = {"uspto_odp": "USPTO_ODP_API_KEY", "epo_ops": "EPO_OPS_KEY and EPO_OPS_SECRET"}[name]
                run.notes.append(f"{name} was skipped: no {hint} is configured.")
                continue
            if name == "uspto_odp" and parsed.jurisdictions and "US" not in parsed.jurisdictions:
                run.notes.append("uspto_odp was skipped: it covers US applications only and 'jurisdictions' "
                                 "leaves out US.")
                continue
            services.append(name)
        return services

    @staticmethod
    def _filters(service: str, parsed: PriorArtInput, size: int) -> dict[str, Any]:
        filters: dict[str, Any] = {"size": size, "date_cutoff": parsed.date_cutoff}
        if service == "epo_ops":
            filters["jurisdictions"] = parsed.jurisdictions
        if service != "openalex":
            filters["cpc"] = parsed.cpc
        return filters

    @staticmethod
    def _source_notes(records: list[SearchRecord]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for record in records:
            row = out.setdefault(record.service, {"status": "ok", "requests": 0, "results": 0, "cached": 0,
                                                  "notes": []})
            row["requests"] += record.attempts
            row["results"] += record.results
            row["cached"] += int(record.status == "cached")
            if record.status in ("failed", "skipped", "stopped") and record.detail not in row["notes"]:
                row["notes"].append(record.detail)
            if record.status == "failed":
                row["status"] = "failed" if row["status"] in ("ok", "failed") and not row["results"] else "partial"
        return out

    async def _search(self, run: AdapterRun, parsed: PriorArtInput, queries: list[str], top_k: int
                      ) -> tuple[list[SearchRecord], list[Hit]]:
        services = self._services(run, parsed)
        prices = await db_step(search_price_table)()
        reserve = 1  # one API call is kept for the re-rank step
        state = {"budget_stop": False}

        async def counted(name: str, kind: str, factory: Any) -> Any:
            left = run.api_calls_left()
            if left is not None and left <= reserve:
                raise BudgetExhausted("max_api_calls", run.max_api_calls or 0)
            fee = search_price(prices, name, kind)
            try:
                return await run.external(name, factory, fee_micro_usd=fee)
            except NotSent:
                run.external_calls -= 1  # never sent: not an API call, not charged
                run.external_fees_micro_usd -= fee
                raise

        records = {(s, q): SearchRecord(service=s, query=q) for q in queries for s in services}
        found: dict[tuple[str, str], list[Hit]] = {}
        failures: dict[str, SearchError] = {}
        timeout = httpx.Timeout(settings.SEARCH_TIMEOUT_SECONDS)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True,
                                     headers={"User-Agent": "llm-gateway-prior-art/1"}) as client:
            clients: dict[str, Any] = {"openalex": openalex.OpenAlexClient(client),
                                       "uspto_odp": uspto_odp.UsptoOdpClient(client),
                                       "epo_ops": epo_ops.EpoOpsClient(client)}

            async def one(service: str, query: str, attempts: Attempts) -> list[Hit]:
                extra: dict[str, Any] = {}
                if service == "epo_ops":
                    extra = {"jurisdictions": parsed.jurisdictions, "cpc": parsed.cpc}
                elif service == "uspto_odp":
                    extra = {"cpc": parsed.cpc}
                return await clients[service].search(query, size=top_k, date_cutoff=parsed.date_cutoff,
                                                     external=counted, attempts=attempts, **extra)

            async def service_loop(service: str) -> None:
                for query in queries:
                    record = records[(service, query)]
                    filters = self._filters(service, parsed, top_k)
                    cached = await cached_hits(service, query, filters)
                    if cached is not None:
                        found[(service, query)] = cached
                        record.status, record.results, record.detail = "cached", len(cached), "served from cache"
                        run.emit({"event": "search", **record.public()})
                        continue
                    if state["budget_stop"]:
                        record.status, record.detail = "skipped", "max_api_calls reached"
                        continue
                    if service in failures:
                        record.status, record.detail = "skipped", f"{service} failed earlier in this run"
                        continue
                    attempts = Attempts()
                    try:
                        hits = await one(service, query, attempts)
                    except BudgetExhausted:
                        state["budget_stop"] = True
                        record.status = "stopped" if attempts.sent else "skipped"
                        record.detail = "max_api_calls reached"
                    except SearchError as error:
                        failures[service] = error
                        record.status, record.detail = "failed", str(error)
                    except Exception as error:  # a bug or an unexpected shape: this search failed, the run goes on
                        logger.exception("prior-art search %s failed", service)
                        failures[service] = SearchError(f"{service}: {type(error).__name__}", kind="error",
                                                        transient=False)
                        record.status, record.detail = "failed", f"unexpected error ({type(error).__name__})"
                    else:
                        found[(service, query)] = hits
                        record.status, record.results = "ok", len(hits)
                        await store_hits(service, query, filters, hits)
                    record.attempts = attempts.sent
                    run.emit({"event": "search", **record.public()})

            await asyncio.gather(*(service_loop(s) for s in services))

        ordered = [records[(s, q)] for q in queries for s in services]
        for service, error in failures.items():
            skipped = sum(1 for r in ordered if r.service == service and r.status == "skipped")
            run.notes.append(f"{service} failed ({error}); returning what was found so far"
                             + (f"; its {skipped} remaining search(es) were not sent." if skipped else "."))
        if state["budget_stop"]:
            done = sum(1 for r in ordered if r.status in ("ok", "cached"))
            run.notes.append(f"Stopped searching at max_api_calls = {run.max_api_calls} (one call kept for the "
                             f"re-rank): {done} of {len(ordered)} planned searches completed; returning what was "
                             "found so far.")
        merged = dedupe(interleave([found.get((s, q), []) for q in queries for s in services]))
        if len(merged) > top_k:
            run.notes.append(f"{len(merged)} distinct candidates found; kept the first {top_k} (retrieval_top_k).")
        return ordered, merged[:top_k]

    # ---- ranking ------------------------------------------------------------------------------------

    def _rerank_prompt(self, run: AdapterRun, parsed: PriorArtInput, candidates: list[Hit]) -> list[dict[str, Any]]:
        budget = run.limits.get("max_tokens_in")
        short = parsed.text[:2000]
        for length, description in ((400, parsed.text), (240, parsed.text), (120, parsed.text), (0, parsed.text),
                                    (0, short)):
            blocks = []
            for index, hit in enumerate(candidates, 1):
                head = f"[C{index}] ({hit.source}, {hit.year or 'n.d.'}) {hit.title}"
                body = snippet(hit.abstract, length) if length else ""
                blocks.append(head + ("\n" + body if body else ""))
            user = f"Invention:\n<<<\n{description}\n>>>\n\nCandidates:\n" + "\n\n".join(blocks)
            messages = [{"role": "system", "content": RERANK_SYSTEM}, {"role": "user", "content": user}]
            if budget is None or text_tokens(RERANK_SYSTEM + user) <= budget:
                break
        return messages  # the smallest form, even if still above max_tokens_in

    async def _rank(self, run: AdapterRun, parsed: PriorArtInput, candidates: list[Hit], wanted: int
                    ) -> list[dict[str, Any]]:
        ids = {f"C{i}": hit for i, hit in enumerate(candidates, 1)}
        wanted_terms = set(key_terms(parsed.text))
        lexical = {i: lexical_score(wanted_terms, f"{h.title} {h.abstract}") for i, h in ids.items()}
        ranking: list[tuple[str, float | None, str]] = []
        try:
            answer = await run.llm(self._rerank_prompt(run, parsed, candidates), step="rerank")
            ranking = parse_ranking(answer, set(ids))
            if not ranking:
                run.notes.append("The model's re-ranking was unusable; candidates are ordered by lexical overlap "
                                 "with the description instead.")
        except BudgetExhausted as stop:
            run.notes.append(f"No API call left for the re-rank ({stop.key} = {stop.limit}); candidates are ordered "
                             "by lexical overlap with the description.")
        except calls.AllCandidatesFailed as failure:
            run.notes.append(f"The re-rank step failed ({failure}); candidates are ordered by lexical overlap with "
                             "the description.")
        ranked_ids = [i for i, _, _ in ranking]
        if ranking and len(ranking) < len(ids):
            run.notes.append(f"The model ranked {len(ranking)} of {len(ids)} candidates; the rest follow, ordered by "
                             "lexical overlap.")
        rest = sorted((i for i in ids if i not in ranked_ids), key=lambda i: (-lexical[i], int(i[1:])))
        details = {i: (score, rationale) for i, score, rationale in ranking}
        items = []
        for rank, ident in enumerate([*ranked_ids, *rest][:wanted], 1):
            hit = ids[ident]
            score, rationale = details.get(ident, (None, ""))
            if ident not in details:
                rationale = f"Ordered by lexical overlap with the description ({lexical[ident]:.2f})."
            items.append({
                "rank": rank, "source": hit.source, "identifier": hit.identifier,
                "publication_number": hit.publication_number, "kind": hit.kind, "doi": hit.doi,
                "title": hit.title, "year": hit.year, "date": hit.date, "cpc": hit.cpc, "applicants": hit.applicants,
                "family_id": hit.family_id, "abstract_snippet": snippet(hit.abstract), "url": hit.url,
                "found_by": hit.found_by, "sources": hit.sources or [hit.source], "cached": hit.cached,
                "relevance_score": score if score is not None else lexical[ident],
                "rationale": rationale or "No rationale given by the model.",
                "_text": f"{hit.title}. {hit.abstract}",
            })
        return items


ADAPTER = PriorArtAdapter()
