"""A loopback fake of the OpenAlex works API (`GET /works`), plus the small HTTP server the search
fakes share (ODP: tests/fakes/uspto_odp_fake.py, OPS: tests/fakes/epo_ops_fake.py).

`SearchFake` is a real HTTP/1.1 server on 127.0.0.1 in a background thread. It records every request
that reached it (`received`, `request_count`) and follows a fault script consumed one entry per
request: `fail_next(status, headers=...)` (an error status with the service's error body and e.g. a
`Retry-After`), `malformed_next()` (a 200 whose body is not JSON), `delay_next(seconds)` (answer late:
beyond the client's timeout it is a slow service), and `go_down()` / `come_up()` (connection refused:
such requests never reach it and are not counted). OpenAlex checks `api_key` when the fake has one.

`OpenAlexFake` answers `GET /works?search=...&filter=...&per-page=...&select=...` from a small fixed
corpus with OpenAlex's response shape: `{"meta": {...}, "results": [work], "group_by": []}` where a work
carries `id`, `doi`, `title`, `display_name`, `publication_year`, `publication_date`,
`abstract_inverted_index` and `primary_location.landing_page_url`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class RawBody:
    """A body sent as it is (not JSON-encoded): OPS's XML faults, a broken body."""

    data: bytes
    content_type: str = "application/xml"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: SearchFake

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and went away is normal here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        self.server.fake._dispatch(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake._dispatch(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class SearchFake:
    name = "search"

    def __init__(self) -> None:
        self.received: list[Request] = []
        self.port = 0
        self._faults: deque[tuple[str, float, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._serve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.received)

    def _serve(self) -> None:
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._httpd = httpd

    def go_down(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def come_up(self) -> None:
        if self._httpd is None:
            self._serve()

    close = go_down

    def __enter__(self) -> SearchFake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._faults.extend(("status", float(status), dict(headers or {})) for _ in range(times))

    def malformed_next(self, times: int = 1) -> None:
        with self._lock:
            self._faults.extend(("malformed", 0.0, {}) for _ in range(times))

    def delay_next(self, seconds: float, times: int = 1) -> None:
        with self._lock:
            self._faults.extend(("delay", seconds, {}) for _ in range(times))

    # ---- request handling ------------------------------------------------------------------------

    def _dispatch(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = Request(method, split.path, params, {k.lower(): v for k, v in h.headers.items()}, body)
        with self._lock:
            self.received.append(request)
            fault = self._faults.popleft() if self._faults else None
        try:
            if fault and fault[0] == "delay":
                time.sleep(fault[1])
            content_type = "application/json"
            if fault and fault[0] == "status":
                status, payload, headers = self.error(int(fault[1]), "injected fault")
                headers = {**headers, **fault[2]}
            elif fault and fault[0] == "malformed":
                status, payload, headers = 200, RawBody(b'{"truncated": [', "application/json"), {}
            else:
                status, payload, headers = self.respond(request)
            if isinstance(payload, RawBody):
                data, content_type = payload.data, payload.content_type
            else:
                data = json.dumps(payload).encode()
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            h.close_connection = True

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def error(self, status: int, message: str) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def inverted_index(text: str) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for position, word in enumerate(text.split()):
        index.setdefault(word, []).append(position)
    return index


# id, doi, title, date, abstract, landing page
WORKS = [
    ("W2001", "10.1000/mrd.2015.001", "Magnetorheological damper for self-closing door hinges", "2015-03-02",
     "A compact magnetorheological damper is integrated into a self-closing hinge so that the closing speed "
     "of the door is controlled by the magnetic field applied to the fluid.", "https://example.org/mrd-2015"),
    ("W2002", "10.1000/brake.2018.7", "Rotary magnetorheological fluid brake for hinge speed control", "2018-06-11",
     "We present a rotary brake filled with magnetorheological fluid that limits the angular speed of a "
     "hinge, with a coil current controlled by a position sensor.", None),
    ("W2003", "10.1000/softclose.2012.3", "Soft-close hinge mechanisms: a review", "2012-09-30",
     "This review surveys soft-close hinge mechanisms for furniture and doors, including viscous, "
     "pneumatic and spring based damping of the closing motion.", "https://example.org/softclose"),
    ("W2004", None, "Viscous damping in furniture hinges", "2009-01-15",
     "Viscous fluid dampers slow the last degrees of hinge closing in cabinet doors.", None),
    # The same paper indexed twice (a preprint without DOI): de-duplicated by normalised title.
    ("W2005", None, "Magnetorheological Damper for Self-Closing Door Hinges.", "2016-05-05",
     "A compact magnetorheological damper is integrated into a self-closing hinge (preprint).", None),
    ("W2006", "10.1000/battery.2020.9", "Battery thermal management using phase change materials", "2020-02-20",
     "Phase change materials absorb heat from lithium battery packs.", None),
    ("W2007", "10.1000/door.2005.1", "Door closer with adjustable hydraulic damping", "2005-11-01",
     "A hydraulic door closer whose damping of the closing door is adjusted by a valve.", None),
    ("W2008", "10.1000/smart.2023.4", "Smart hinge with magnetorheological damping and position sensing",
     "2023-04-04", "A smart door hinge combines magnetorheological damping with an angle position sensor "
     "and a controller for the closing speed.", "https://example.org/smart-hinge"),
    ("W2009", "10.1000/emb.2011.2", "Electromagnetic brake for rotating door hinges", "2011-08-08",
     "An electromagnetic brake holds a rotating hinge at any opening angle of the door.", None),
    ("W2010", "10.1000/protein.2021.5", "Deep learning for protein structure prediction", "2021-07-15",
     "Neural networks predict protein folding from sequence.", None),
]


class OpenAlexFake(SearchFake):
    name = "openalex"

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key  # None: no key needed (OpenAlex's keyless allowance)
        super().__init__()

    @staticmethod
    def work(entry: tuple) -> dict[str, Any]:
        wid, doi, title, date, abstract, landing = entry
        return {
            "id": f"https://openalex.org/{wid}",
            "doi": f"https://doi.org/{doi}" if doi else None,
            "title": title,
            "display_name": title,
            "publication_year": int(date[:4]),
            "publication_date": date,
            "type": "article",
            "abstract_inverted_index": inverted_index(abstract),
            "primary_location": {
                "is_oa": landing is not None,
                "landing_page_url": landing or (f"https://doi.org/{doi}" if doi else None),
                "pdf_url": None,
                "source": {"id": "https://openalex.org/S1", "display_name": "Journal of Test Mechanisms"},
            },
            "cited_by_count": 3,
        }

    def error(self, status: int, message: str) -> tuple[int, Any, dict[str, str]]:
        return status, {"error": message, "message": f"fake openalex: {message}"}, {}

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if request.method != "GET" or request.path.rstrip("/") != "/works":
            return self.error(404, f"no route {request.method} {request.path}")
        if self.api_key is not None and request.params.get("api_key") != self.api_key:
            return self.error(401, "Invalid or missing API key")
        params = request.params
        try:
            per_page = int(params.get("per-page", params.get("per_page", "25")))
        except ValueError:
            return self.error(400, "per-page must be an integer")
        if not 1 <= per_page <= 200:
            return self.error(400, "per-page must be between 1 and 200")
        to_date = from_date = None
        for clause in filter(None, params.get("filter", "").split(",")):
            key, _, value = clause.partition(":")
            if key in ("to_publication_date", "from_publication_date") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                to_date, from_date = (value, from_date) if key.startswith("to") else (to_date, value)
            else:
                return self.error(400, f"Invalid filter: {clause}")
        wanted = set(words(params.get("search", "")))
        scored = []
        for entry in WORKS:
            date = entry[3]
            if (to_date and date > to_date) or (from_date and date < from_date):
                continue
            score = len(wanted & set(words(f"{entry[2]} {entry[4]}"))) if wanted else 1
            if score:
                scored.append((-score, entry[0], entry))
        scored.sort()
        results = [self.work(e) for _, _, e in scored]
        if params.get("select"):
            fields = params["select"].split(",")
            results = [{k: r[k] for k in fields if k in r} for r in results]
        meta = {"count": len(results), "db_response_time_ms": 7, "page": 1, "per_page": per_page,
                "next_cursor": None, "groups_count": None}
        return 200, {"meta": meta, "results": results[:per_page], "group_by": []}, {}
