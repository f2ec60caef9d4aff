"""A test client for the path uvicorn serves: `/v1/` requests go through `gateway_project.asgi.application`.

Under uvicorn, POST /v1/{task}/chat/completions and GET /v1/{task}/models are answered by the pure-ASGI
fast path (llm/asgi.py), not by the Django views; Django's test client only ever reaches the views.
`GatewayClient` keeps DRF's `APIClient` call shape (`.post(path, data, format="json",
HTTP_IDEMPOTENCY_KEY=...)`, `headers=`, `.credentials(...)`) and returns Django response objects
(`.status_code`, `.json()`, `response["X-Request-ID"]`, iteration over a stream), but sends `/v1/`
requests through the ASGI application in-process. Everything else goes to Django's test handler as
before (sessions, `force_authenticate`, `wsgi_request` keep working there).

The exchange runs under asgiref's `async_to_sync` from the test's own thread, as Django's test client
runs async views: with the tests' `DB_STEPS_THREAD_SENSITIVE=True`, every `db_step` then runs on the
thread that holds the test's transaction, so requests see (and write into) the test's data even under
pytest-django's plain `db` fixture.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

import httpx2
from asgiref.sync import async_to_sync
from django.core.signals import got_request_exception, request_finished, request_started
from django.db import close_old_connections
from django.http import HttpResponse, StreamingHttpResponse
from django.test.client import JSON_CONTENT_TYPE_RE
from rest_framework.test import APIClient

ASGI_PREFIXES = ("/v1/",)


@dataclass
class Exchange:
    """What the application sent, as it sent it."""

    status: int
    headers: list[tuple[str, str]]  # lower-case names, in order, repeated names kept
    chunks: list[bytes] = field(default_factory=list)
    streamed: bool = False  # several body messages and no Content-Length: a chunked (streamed) response

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def response(self) -> HttpResponse:
        """As the Django response object the tests read: `.status_code`, `.json()`, `r["X-Request-ID"]`,
        `.headers`; a streamed one is a StreamingHttpResponse (iterate it; `.content` raises)."""
        if self.streamed:
            response: HttpResponse = StreamingHttpResponse(iter(self.chunks), status=self.status)
        else:
            response = HttpResponse(self.body, status=self.status)
        del response["Content-Type"]
        for name, value in self.headers:
            if name == "set-cookie":
                response.cookies.load(SimpleCookie(value))
            else:
                response[name] = value
        response.json = partial(_parse_json, response)
        response.asgi = self
        return response


def _parse_json(response: HttpResponse, **extra: Any) -> Any:
    if not JSON_CONTENT_TYPE_RE.match(response.get("Content-Type", "")):  # as Django's test client checks
        raise ValueError(f'Content-Type header is "{response.get("Content-Type")}", not "application/json"')
    return jsonlib.loads(response.content, **extra)


def scope_for(method: str, path: str, *, headers: Iterable[tuple[str, str]] = (), query_string: str = "",
              scheme: str = "http", server: tuple[str, int] = ("testserver", 80),
              client: tuple[str, int] = ("127.0.0.1", 50000), root_path: str = "") -> dict[str, Any]:
    """An HTTP scope as uvicorn builds it: lower-case header names, a Host header, `path` unquoted."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if not any(name == b"host" for name, _ in raw):
        default_port = 443 if scheme == "https" else 80
        host = server[0] if server[1] == default_port else f"{server[0]}:{server[1]}"
        raw.insert(0, (b"host", host.encode("latin-1")))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method.upper(), "scheme": scheme, "path": path, "raw_path": quote(path).encode("ascii"),
            "query_string": query_string.encode("latin-1"), "root_path": root_path, "headers": raw,
            "client": client, "server": server}


async def exchange(app, scope: dict[str, Any], body: bytes = b"") -> Exchange:
    """One request through an ASGI application; the client stays connected until the response is complete."""
    complete = asyncio.Event()
    start: dict[str, Any] | None = None
    chunks: list[bytes] = []
    messages = 0
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await complete.wait()  # a disconnect watcher waits here until the exchange is over
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal start, messages
        if message["type"] == "http.response.start":
            assert start is None, "the response was started twice"
            start = message
        elif message["type"] == "http.response.body":
            assert start is not None, "a body was sent before the response start"
            assert not complete.is_set(), "a body was sent after the response was complete"
            messages += 1
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                complete.set()

    # As Django's own test handlers do: the request signals' close_old_connections would close the
    # connection that holds the test's transaction (the fast path sends no signals; Django does).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        await app(scope, receive, send)
    finally:
        complete.set()
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    assert start is not None, "the application sent no response"
    headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in start["headers"]]
    streamed = messages > 1 and all(name != "content-length" for name, _ in headers)
    return Exchange(status=start["status"], headers=headers, chunks=chunks, streamed=streamed)


async def arequest(app, method: str, path: str, *, json: Any = None, body: bytes = b"",
                   headers: dict[str, str] | None = None, **scope: Any) -> Exchange:
    headers = dict(headers or {})
    if json is not None:
        body = jsonlib.dumps(json).encode()
        headers.setdefault("Content-Type", "application/json")
    if body:
        headers.setdefault("Content-Length", str(len(body)))
    return await exchange(app, scope_for(method, path, headers=headers.items(), **scope), body)


def request(app, method: str, path: str, **kwargs: Any) -> Exchange:
    """`arequest` from the test's thread, under `async_to_sync` (see the module docstring: not asyncio.run)."""
    return async_to_sync(arequest)(app, method, path, **kwargs)


def _scope_from_environ(environ: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        if value in ("", None):
            continue  # the test client's empty Cookie header
        headers.append((name.replace("_", "-").lower(), str(value)))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    path = environ["PATH_INFO"].encode("iso-8859-1").decode()  # the test client decodes paths as WSGI does
    scope = scope_for(environ["REQUEST_METHOD"], path, headers=headers, query_string=environ.get("QUERY_STRING", ""),
                      scheme=environ["wsgi.url_scheme"], root_path=environ.get("SCRIPT_NAME", ""),
                      server=(environ["SERVER_NAME"], int(environ["SERVER_PORT"])),
                      client=(environ.get("REMOTE_ADDR", "127.0.0.1"), 50000))
    return scope, body


class GatewayClient(APIClient):
    """DRF's APIClient, except that `/v1/` requests go through the ASGI application uvicorn serves."""

    def __init__(self, *args: Any, app=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = app

    @property
    def app(self):
        if self._app is None:
            from gateway_project.asgi import application  # imports every provider SDK: only when needed

            self._app = application
        return self._app

    def request(self, **kwargs: Any):
        kwargs.update(self._credentials)
        environ = self._base_environ(**kwargs)
        if not environ["PATH_INFO"].startswith(ASGI_PREFIXES):
            return super().request(**kwargs)
        scope, body = _scope_from_environ(environ)
        # A request the fast path hands to Django (a wrong method, say) may raise in a view: re-raised
        # here, as Django's test client does, instead of hiding behind a 500.
        exception_uid = f"request-exception-{id(kwargs)}"
        got_request_exception.connect(self.store_exc_info, dispatch_uid=exception_uid)
        try:
            response = async_to_sync(exchange)(self.app, scope, body).response()
        finally:
            got_request_exception.disconnect(dispatch_uid=exception_uid)
        self.check_exception(response)
        response.client = self
        response.request = kwargs
        if response.cookies:
            self.cookies.update(response.cookies)
        return response


class SdkTransport(httpx2.BaseTransport):
    """A provider SDK's HTTP transport (`openai` / `anthropic`, both on httpx2): each request goes
    through the gateway's ASGI application in-process, as uvicorn would serve it, with every header
    the SDK sends; `requests` keeps them for tests that look at what the SDK sent."""

    def __init__(self) -> None:
        self.client = GatewayClient()
        self.requests: list[httpx2.Request] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        headers = {name: value for name, value in request.headers.items()
                   if name.lower() not in ("content-type", "content-length", "host")}
        response = self.client.generic(request.method, request.url.raw_path.decode(), data=request.read(),
                                       content_type=request.headers.get("content-type", "application/json"),
                                       headers=headers)
        content = b"".join(response) if response.streaming else response.content
        return httpx2.Response(response.status_code, headers=list(response.headers.items()), content=content)
