"""Pure-ASGI fast path for the metered API: POST /v1/{TASK}/chat/completions, GET /v1/{TASK}/models and
Anthropic's Messages API, POST /v1/{TASK}/v1/messages and /v1/{TASK}/messages (llm/anthropic_messages.py).

Django's ASGI handler costs about 5 ms per request on the benchmark machine before the view runs:
every `MiddlewareMixin` middleware hops through `sync_to_async`, a thread-sensitive context is set
up per request, and the request signals fire. None of it does anything for these two endpoints
(bearer tokens, no sessions, cookies, CSRF or templates), so they are served here, on the event
loop, by the same endpoint functions the Django views call (`llm/apis.py`). Everything else,
including any other method or path under /v1/, goes to Django.

What Django would have done and still must happen here:
- ALLOWED_HOSTS is checked (a 400 in the error shape); SecurityMiddleware's and
  XFrameOptionsMiddleware's response headers are added; with SECURE_SSL_REDIRECT on, requests
  go to Django, which redirects; so do requests CommonMiddleware would refuse (DISALLOWED_USER_AGENTS)
  or redirect (PREPEND_WWW). `REVIEWED_MIDDLEWARE` below is the list this was checked against.
- A body over DATA_UPLOAD_MAX_MEMORY_SIZE is refused with 413, without reading it.
- Database connections: each `db_step` closes (returns to the pool) what it used, so there is no
  per-request `close_old_connections` to run.
- A client that disconnects cancels the call (the pipeline settles it as cancelled); during a
  stream, the event generator is closed, which closes the upstream stream and settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from email.header import Header
from typing import Any, TypeVar

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http.request import split_domain_port, validate_host

from gateway_project.errors import BadRequest, internal_error_payload
from llm import anthropic_messages, apis

logger = logging.getLogger("gateway.llm.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

_ROUTE = re.compile(r"/v1/(?P<task>[^/]+)/(?P<endpoint>chat/completions|models|v1/messages|messages)")
_METHODS = {"chat/completions": "POST", "models": "GET", "v1/messages": "POST", "messages": "POST"}
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


# The middleware the fast path was reviewed against, in order: it runs none of it, so each entry says what
# it does for POST /v1/{task}/chat/completions and GET /v1/{task}/models and where the fast path does that.
# tests/llm/test_asgi_fast_path.py fails when settings.MIDDLEWARE stops being exactly this list.
REVIEWED_MIDDLEWARE = (
    # Redirects plain HTTP when SECURE_SSL_REDIRECT (such requests go to Django here); adds HSTS on secure
    # requests, X-Content-Type-Options, Referrer-Policy and Cross-Origin-Opener-Policy: `_headers`.
    "django.middleware.security.SecurityMiddleware",
    # Loads request.session from the session cookie, lazily. The endpoints authenticate bearer tokens and
    # never touch the session, so it neither reads nor saves one, nor adds `Vary: Cookie`: nothing to do.
    "django.contrib.sessions.middleware.SessionMiddleware",
    # ALLOWED_HOSTS (`_host_allowed`); DISALLOWED_USER_AGENTS and PREPEND_WWW, which refuse or redirect
    # before any view (those go to Django: `_common_middleware_answers`); APPEND_SLASH only redirects paths
    # that match no route, and these routes match exactly; Content-Length on whole bodies: `_send_json`.
    "django.middleware.common.CommonMiddleware",
    # The chat and messages views are csrf_exempt (bearer or x-api-key, no cookies), models is a GET; no CSRF cookie is
    # set because no CSRF token is asked for: nothing to do.
    "django.middleware.csrf.CsrfViewMiddleware",
    # request.user from the session, lazily; the endpoints authenticate the bearer token themselves
    # (llm.auth.authenticate): nothing to do.
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Marks request.user's OTP verification for staff sessions (adminconsole/otp.py); no session user
    # on these endpoints: nothing to do.
    "django_otp.middleware.OTPMiddleware",
    # Cookie/session message storage for templates; the endpoints add no messages: nothing to do.
    "django.contrib.messages.middleware.MessageMiddleware",
    # X-Frame-Options from X_FRAME_OPTIONS on every response: `_headers`.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)


class ClientDisconnected(Exception):
    """The client went away before its request body arrived."""


class MeteredApi:
    """Serves the metered endpoints itself and hands every other request to `fallback` (Django)."""

    def __init__(self, fallback: ASGIApp) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            match = _ROUTE.fullmatch(path)
            if match is not None and scope["method"] == _METHODS[match["endpoint"]]:
                headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                           for name, value in scope["headers"]}
                if ((not settings.SECURE_SSL_REDIRECT or _is_secure(scope, headers))  # else Django redirects
                        and not _common_middleware_answers(headers, scope)):
                    await _guarded(scope, receive, send, headers, match["task"], match["endpoint"])
                    return
        await self.fallback(scope, receive, send)


async def _guarded(scope: Scope, receive: Receive, send: Send, headers: dict[str, str], task_code: str,
                   endpoint: str) -> None:
    started = False

    async def tracked(message: dict[str, Any]) -> None:
        nonlocal started
        started = True
        await send(message)

    try:
        await _serve(scope, receive, tracked, headers, task_code, endpoint)
    except Exception:
        logger.exception("unhandled error serving %s", scope["path"])
        if not started:
            await _send_json(send, scope, headers, apis.ApiResponse(500, {}, internal_error_payload()))


async def _serve(scope: Scope, receive: Receive, send: Send, headers: dict[str, str], task_code: str,
                 endpoint: str) -> None:
    if not _host_allowed(_host(headers, scope)):
        error = BadRequest("The Host header is not one this server answers to.", code="disallowed_host")
        await _send_json(send, scope, headers, apis.ApiResponse(400, {}, error.payload()))
        return
    if endpoint == "models":  # quick, and nothing to settle: no disconnect watch
        result = await apis.models_endpoint(method="GET", headers=headers, task_code=task_code)
    else:
        try:
            body = await _read_body(receive, headers)
        except ClientDisconnected:
            return
        if body is None:
            too_large = apis.request_too_large() if endpoint == "chat/completions" else (
                anthropic_messages.request_too_large())
            await _send_json(send, scope, headers, too_large)
            return
        if endpoint == "chat/completions":
            serving = apis.chat_completions_endpoint(method="POST", headers=headers, body=body, task_code=task_code)
        else:  # Anthropic's Messages API (llm/anthropic_messages.py), the same metered pipeline
            serving = anthropic_messages.messages_endpoint(method="POST", headers=headers, body=body,
                                                           task_code=task_code)
        result = await _cancelled_on_disconnect(serving, receive)
    if result is None:
        return  # the client went away; the pipeline settled the call as cancelled
    if result.events is None:
        await _send_json(send, scope, headers, result)
    else:
        await _send_events(send, receive, scope, headers, result)


def _is_secure(scope: Scope, headers: dict[str, str]) -> bool:
    """Django's `HttpRequest.is_secure()`."""
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        value = headers.get(meta_name.removeprefix("HTTP_").replace("_", "-").lower())
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "https"


def _common_middleware_answers(headers: dict[str, str], scope: Scope) -> bool:
    """What CommonMiddleware refuses (DISALLOWED_USER_AGENTS, 403) or redirects (PREPEND_WWW) before any
    view runs: such requests go to Django, which answers them as it does on every other path."""
    agent = headers.get("user-agent")
    if agent is not None and any(regex.search(agent) for regex in settings.DISALLOWED_USER_AGENTS):
        return True
    if settings.PREPEND_WWW:
        host = _host(headers, scope)
        return _host_allowed(host) and not host.startswith("www.")  # a bad host stays our 400
    return False


def _host(headers: dict[str, str], scope: Scope) -> str:
    """The host Django's `HttpRequest.get_host()` reads."""
    host = headers.get("x-forwarded-host") if settings.USE_X_FORWARDED_HOST else None
    if host is None:
        host = headers.get("host")
    if host is None:
        server = scope.get("server") or ("", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    return host


def _host_allowed(host: str) -> bool:
    """Django's `HttpRequest.get_host()` check, which CommonMiddleware runs on every request."""
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes | None:
    """The whole body, or None if it exceeds DATA_UPLOAD_MAX_MEMORY_SIZE (then left unread)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None:
        try:
            if int(headers.get("content-length") or 0) > limit:
                return None
        except ValueError:
            pass  # a malformed length: the server's parser has the last word; count what arrives
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _cancelled_on_disconnect(call: Coroutine[Any, Any, T], receive: Receive) -> T | None:
    """Run `call` in this task; if the client disconnects meanwhile, cancel it and return None.

    The pipeline catches the cancellation to settle what the call consumed (as Django's ASGI
    handler's disconnect listener made it do before)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await call
    except asyncio.CancelledError:
        if not gone:
            raise  # the server is cancelling us
        task.uncancel()
        return None
    finally:
        watcher.cancel()


def _header_value(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # as Django's ResponseHeaders does: an RFC 2047 encoded word
        return Header(value, "utf-8", maxlinelen=sys.maxsize).encode().encode("latin-1")


def _headers(scope: Scope, headers: dict[str, str], result: apis.ApiResponse,
             content_type: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = content_type + [(name.lower().encode("latin-1"), _header_value(value))
                          for name, value in result.headers.items()]
    # What SecurityMiddleware and XFrameOptionsMiddleware add to every Django response.
    if settings.SECURE_HSTS_SECONDS and _is_secure(scope, headers):
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        out.append((b"strict-transport-security", hsts.encode("latin-1")))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        out.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        policy = policy if isinstance(policy, str) else ",".join(policy)
        out.append((b"referrer-policy", policy.encode("latin-1")))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        out.append((b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode("latin-1")))
    out.append((b"x-frame-options", settings.X_FRAME_OPTIONS.upper().encode("latin-1")))
    return out


async def _send_json(send: Send, scope: Scope, headers: dict[str, str], result: apis.ApiResponse) -> None:
    try:
        body = json.dumps(result.body).encode()  # the default encoder is the C one, set up once
    except TypeError:  # a date or a Decimal: what JsonResponse would have written
        body = json.dumps(result.body, cls=DjangoJSONEncoder).encode()
    out = _headers(scope, headers, result, _JSON)
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": result.status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_events(send: Send, receive: Receive, scope: Scope, headers: dict[str, str],
                       result: apis.ApiResponse) -> None:
    events = result.events
    assert events is not None

    async def pump() -> None:
        try:
            await send({"type": "http.response.start", "status": result.status,
                        "headers": _headers(scope, headers, result, _SSE)})
            try:
                async for event in events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            except Exception:
                # The headers are out: report it in-band, as the pipeline does provider failures.
                logger.exception("unhandled error in a chat completion stream")
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: " + json.dumps(internal_error_payload()).encode() + b"\n\n"})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Cancelled while sending (the generator is parked at a yield): closing it runs its
            # `finally`, which closes the upstream stream and settles the call.
            with contextlib.suppress(Exception):
                await events.aclose()

    await _cancelled_on_disconnect(pump(), receive)
