"""A loopback fake of the PatentsView PatentSearch API: `POST /api/v1/patent/` with `X-Api-Key`.

Body `{"q": query, "f": [fields], "o": {"size": n}, "s": [{"field": "asc"|"desc"}]}`; the query language
supports `_and`, `_or`, `_not`, `_text_all`, `_text_any`, `_text_phrase`, `_eq`, `_gte`, `_lte`, `_gt`,
`_lt`. Answers `{"error": false, "count": n, "total_hits": N, "patents": [{requested fields}]}`; a
missing or wrong key is a 403, a malformed query a 400 with the reason in `X-Status-Reason`.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.openalex_fake import Request, SearchFake, words

PATENTS = [
    {"patent_id": "9000001", "patent_date": "2016-04-05",
     "patent_title": "Self-closing hinge with magnetorheological damper",
     "patent_abstract": "A hinge for a door comprises a magnetorheological damper whose coil controls the "
                        "closing speed of the door."},
    {"patent_id": "9000002", "patent_date": "2013-10-22",
     "patent_title": "Soft close hinge for cabinet doors",
     "patent_abstract": "A soft close hinge uses a viscous damper to slow the closing door."},
    {"patent_id": "9000003", "patent_date": "2019-12-31",
     "patent_title": "Door hinge with angle sensor and electronic brake",
     "patent_abstract": "An angle sensor measures the door position and an electronic brake controls the "
                        "closing speed of the hinge."},
    {"patent_id": "9000004", "patent_date": "2021-03-09",
     "patent_title": "Magnetorheological fluid damper with position sensing for doors",
     "patent_abstract": "A magnetorheological fluid damper for a door hinge with a position sensor and "
                        "controller adjusting the damping."},
    {"patent_id": "9000005", "patent_date": "2008-07-01",
     "patent_title": "Lithium battery cooling plate",
     "patent_abstract": "A cooling plate for battery modules."},
    {"patent_id": "D900006", "patent_date": "2014-02-11",
     "patent_title": "Hinge",
     "patent_abstract": "The ornamental design for a hinge."},
]

OPERATORS = {"_eq", "_neq", "_gt", "_gte", "_lt", "_lte", "_text_all", "_text_any", "_text_phrase",
             "_contains", "_begins"}


class QueryError(ValueError):
    pass


def matches(query: Any, patent: dict[str, Any]) -> bool:
    if not isinstance(query, dict) or len(query) != 1:
        raise QueryError("each query object must have exactly one key")
    (op, arg), = query.items()
    if op in ("_and", "_or"):
        if not isinstance(arg, list) or not arg:
            raise QueryError(f"{op} takes a non-empty array")
        results = [matches(q, patent) for q in arg]
        return all(results) if op == "_and" else any(results)
    if op == "_not":
        return not matches(arg, patent)
    if op not in OPERATORS:
        if op in patent:  # the shorthand {"field": value} is _eq
            return str(patent[op]) == str(arg)
        raise QueryError(f"unknown operator or field: {op}")
    if not isinstance(arg, dict) or len(arg) != 1:
        raise QueryError(f"{op} takes one field")
    (name, value), = arg.items()
    if name not in patent:
        raise QueryError(f"unknown field: {name}")
    field = str(patent[name])
    if op.startswith("_text"):
        have, want = set(words(field)), words(str(value))
        if op == "_text_all":
            return all(w in have for w in want)
        if op == "_text_any":
            return any(w in have for w in want)
        return " ".join(want) in " ".join(words(field))
    return {"_eq": field == str(value), "_neq": field != str(value), "_gt": field > str(value),
            "_gte": field >= str(value), "_lt": field < str(value), "_lte": field <= str(value),
            "_contains": str(value) in field, "_begins": field.startswith(str(value))}[op]


class PatentsViewFake(SearchFake):
    name = "patentsview"

    def __init__(self, api_key: str = "pv-test-key") -> None:
        self.api_key = api_key
        super().__init__()

    def error(self, status: int, message: str) -> tuple[int, Any, dict[str, str]]:
        return status, {"detail": message}, {"X-Status-Reason": message}

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if request.method != "POST" or request.path != "/api/v1/patent/":
            return self.error(404, f"no route {request.method} {request.path}")
        if request.headers.get("x-api-key") != self.api_key:
            return self.error(403, "Invalid or missing API key")
        body = request.body
        if not isinstance(body, dict) or "q" not in body:
            return self.error(400, "the body must be a JSON object with 'q'")
        fields = body.get("f") or ["patent_id", "patent_title", "patent_date"]
        if not isinstance(fields, list) or any(f not in PATENTS[0] for f in fields):
            return self.error(400, f"invalid fields: {fields}")
        size = (body.get("o") or {}).get("size", 100)
        if not isinstance(size, int) or not 1 <= size <= 1000:
            return self.error(400, "o.size must be between 1 and 1000")
        try:
            hits = [p for p in PATENTS if matches(body["q"], p)]
        except QueryError as error:
            return self.error(400, f"Invalid query: {error}")
        for sort in reversed(body.get("s") or [{"patent_id": "asc"}]):
            (key, direction), = sort.items()
            hits.sort(key=lambda p: p[key], reverse=direction == "desc")
        page = [{f: p[f] for f in fields} for p in hits[:size]]
        return 200, {"error": False, "count": len(page), "total_hits": len(hits), "patents": page}, {}
