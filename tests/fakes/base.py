"""Shared machinery of the loopback provider fakes.

A fake is a real HTTP/1.1 server on 127.0.0.1 (keep-alive; JSON bodies with Content-Length, event
streams with chunked transfer encoding, as the real APIs send them) running in a background thread.
Subclasses speak one provider's protocol; this module gives them:

* deterministic answers: the reply to a request depends only on the model and the prompt text;
  output tokens are whitespace words (one streamed chunk per word), each protocol has its own fixed
  rule for input tokens and reports both in its usage block;
* a ledger, `billed = [(model, tokens_in, tokens_out)]`, of every generation it billed, including
  the part of a stream that was sent before a cut or a client that went away;
* `received`, every request as it arrived (path, lower-cased headers, JSON body);
* a fault script consumed one entry per call, in order: `fail_next` (an HTTP error status with the
  provider's error body, optionally with the message a test chooses: a key quoted back, an internal
  host), `delay_next` (before answering, or after K streamed chunks), `malformed_next`
  (a body or stream event that is not valid JSON, or JSON missing the required fields), `cut_next`
  (drop the connection after K streamed chunks, or end the body early as a proxy would),
  `error_event_next` (an error event in the middle of a 200 stream), `filter_next` (the provider's
  content-filter ending), and `go_down` / `come_up` (connection refused until it comes back);
* a request with the wrong key gets the provider's own answer (`send_unauthorized`: OpenAI's 401 quotes
  the key it was sent back, Gemini's is a 400 whose ErrorInfo says API_KEY_INVALID, as the real APIs
  do), and `closed_port()` names a loopback port nothing listens on.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORDS = (
    "every fake provider answers with the same words for the same prompt so a test can predict the text "
    "and the tokens it will bill while the real client library parses the wire format exactly as it would "
    "against the production service"
).split()


def words_of(text: str) -> int:
    """The fakes' token unit: whitespace-separated words."""
    return len(text.split())


def answer(model: str, prompt: str, max_tokens: int | None) -> tuple[list[str], bool]:
    """Deterministic reply words for a prompt, capped at max_tokens; and whether the cap cut it short."""
    digest = hashlib.sha256(f"{model}\n{prompt}".encode()).digest()
    natural = 6 + digest[0] % 20  # 6..25 words
    count = natural if max_tokens is None else max(0, min(natural, int(max_tokens)))
    start = digest[1] % len(_WORDS)
    return [_WORDS[(start + i) % len(_WORDS)] for i in range(count)], count < natural


def pieces(words: list[str]) -> list[str]:
    """The streamed text pieces: one word per chunk, joined by the leading space."""
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def response_id(prefix: str, model: str, prompt: str) -> str:
    return prefix + hashlib.sha256(f"{model}\n{prompt}".encode()).hexdigest()[:24]


@dataclass
class Fault:
    kind: str  # status | delay | malformed | cut | error_event | filter
    status: int = 0
    seconds: float = 0.0
    after_chunks: int | None = None  # stream faults: strike after this many content chunks
    clean: bool = False  # cut: end the HTTP body properly instead of dropping the connection
    variant: str = "truncated"  # malformed: "truncated" JSON, or "missing" required fields
    code: str | None = None  # status / error_event: the provider's error code or type
    message: str | None = None  # status: the provider's error message (else its usual one)


@dataclass
class Event:
    """One server-sent event of a planned stream."""

    data: bytes
    tokens_out: int  # output tokens generated once this event has been sent
    content: bool = False  # carries generated text; stream faults count these


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


def _drop(sock: socket.socket) -> None:
    """End a connection from the server side: the client reads what was sent, then EOF."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not block go_down / close
    fake: FakeProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, OSError)):  # a client that went away is normal
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.fake._dispatch(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet test output


class FakeProvider:
    """Base of the protocol fakes. Use as a context manager, or call close()."""

    name = "fake"

    def __init__(self, api_key: str | None = "test-key") -> None:
        self.api_key = api_key  # None: any key (or none) is accepted
        self.billed: list[tuple[str, int, int]] = []
        self.received: list[Received] = []
        self.down = False
        self.port = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._sockets: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._serve()

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"fake-{self.name}-{self.port}").start()
        self._httpd = httpd

    def _stop_listening(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _drop(sock)

    def go_down(self) -> None:
        """Connection refused from now on: the listening socket closes and open connections are dropped."""
        with self._lock:
            self.down = True
        self._stop_listening()
        self._drop_connections()

    def come_up(self) -> None:
        """Listen again on the same port."""
        with self._lock:
            self.down = False
        if self._httpd is None:
            self._serve()

    def close(self) -> None:
        self._stop_listening()
        self._drop_connections()

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no call is being answered (the ledger is final)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"fake {self.name}: calls still in flight after {timeout}s")

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    # ---- fault script ----------------------------------------------------------------------------

    def _script(self, fault: Fault, times: int) -> None:
        with self._lock:
            self._faults.extend(Fault(**vars(fault)) for _ in range(times))

    def fail_next(self, status: int, times: int = 1, *, code: str | None = None, message: str | None = None) -> None:
        """The next `times` calls get this HTTP status with the provider's error body (with `message`
        as its text when given: e.g. the key quoted back, or an internal proxy's host and port)."""
        self._script(Fault("status", status=status, code=code, message=message), times)

    def delay_next(self, seconds: float, times: int = 1, *, after_chunks: int | None = None) -> None:
        """Wait before answering (or, in a stream, after `after_chunks` content chunks)."""
        self._script(Fault("delay", seconds=seconds, after_chunks=after_chunks), times)

    def malformed_next(self, times: int = 1, *, variant: str = "truncated", after_chunks: int = 0) -> None:
        """A 200 whose body is not valid JSON ("truncated") or lacks required fields ("missing");
        in a stream, an event whose data is truncated JSON after `after_chunks` content chunks."""
        self._script(Fault("malformed", variant=variant, after_chunks=after_chunks), times)

    def cut_next(self, after_chunks: int, times: int = 1, *, clean: bool = False) -> None:
        """Stop a stream after `after_chunks` content chunks: drop the connection mid-body, or with
        clean=True end the HTTP body properly without the protocol's final events."""
        self._script(Fault("cut", after_chunks=after_chunks, clean=clean), times)

    def error_event_next(self, after_chunks: int, times: int = 1, *, status: int = 500,
                         code: str | None = None) -> None:
        """In a stream, the provider's error event after `after_chunks` content chunks (HTTP status stays 200)."""
        self._script(Fault("error_event", status=status, after_chunks=after_chunks, code=code), times)

    def filter_next(self, times: int = 1) -> None:
        """The provider's content filter stops the answer half-way (its own finish reason)."""
        self._script(Fault("filter"), times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # ---- request handling ------------------------------------------------------------------------

    def _dispatch(self, h: _Handler) -> None:
        if self.down:  # a connection that raced go_down
            h.close_connection = True
            _drop(h.connection)
            return
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.received.append(Received(h.path, {k.lower(): v for k, v in h.headers.items()}, body))
            fault = self._faults.popleft() if self._faults else None
            self._in_flight += 1
        try:
            if fault is not None and fault.kind == "delay" and fault.after_chunks is None:
                time.sleep(fault.seconds)
                fault = None
            if not self.authorized(h):
                self.send_unauthorized(h)
            elif fault is not None and fault.kind == "status":
                self.send_error_status(h, fault.status, fault.code, fault.message)
            elif not isinstance(body, dict):
                self.send_error_status(h, 400, message="the request body must be a JSON object")
            else:
                self.handle(h, body, fault)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            h.close_connection = True  # the client went away
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def bill(self, model: str, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            self.billed.append((model, tokens_in, tokens_out))

    # ---- responses -------------------------------------------------------------------------------

    def send_json(self, h: _Handler, status: int, payload: Any = None, *, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def send_error_status(self, h: _Handler, status: int, code: str | None = None, message: str | None = None) -> None:
        self.send_json(h, status, self.error_body(status, code, message or f"fake {self.name}: error {status}"))

    def send_malformed(self, h: _Handler, fault: Fault) -> None:
        if fault.variant == "missing":
            self.send_json(h, 200, self.missing_fields_body())
        else:
            self.send_json(h, 200, raw=self.truncated_body())

    def send_stream(self, h: _Handler, model: str, tokens_in: int, events: list[Event], fault: Fault | None) -> None:
        """Send the planned events over a chunked body, striking with a stream fault, and bill what was
        generated (also when the stream stops early or the client goes away)."""
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        generated = 0
        content_sent = 0
        try:
            for event in events:
                if fault is not None and event.content and content_sent == (fault.after_chunks or 0):
                    if fault.kind == "delay":
                        time.sleep(fault.seconds)
                        fault = None
                    elif fault.kind == "cut":
                        if fault.clean:
                            self._end_chunks(h)
                        else:
                            h.close_connection = True
                            _drop(h.connection)
                        return
                    elif fault.kind == "malformed":
                        self._chunk(h, self.malformed_event())
                        self._end_chunks(h)
                        return
                    elif fault.kind == "error_event":
                        self._chunk(h, self.error_event(fault.status, fault.code))
                        self._end_chunks(h)
                        return
                self._chunk(h, event.data)
                generated = event.tokens_out
                content_sent += event.content
            self._end_chunks(h)
        finally:
            self.bill(model, tokens_in, generated)

    @staticmethod
    def _chunk(h: _Handler, data: bytes) -> None:
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()

    @staticmethod
    def _end_chunks(h: _Handler) -> None:
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    # ---- protocol hooks --------------------------------------------------------------------------

    def authorized(self, h: _Handler) -> bool:
        raise NotImplementedError

    def send_unauthorized(self, h: _Handler) -> None:
        """The provider's answer to a wrong key (the fakes send each provider's own status and wording)."""
        self.send_error_status(h, 401)

    def handle(self, h: _Handler, body: dict[str, Any], fault: Fault | None) -> None:
        raise NotImplementedError

    def error_body(self, status: int, code: str | None, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def error_event(self, status: int, code: str | None) -> bytes:
        raise NotImplementedError

    def malformed_event(self) -> bytes:
        raise NotImplementedError

    def missing_fields_body(self) -> dict[str, Any]:
        raise NotImplementedError

    def truncated_body(self) -> bytes:
        return b'{"id": "fake-truncated", "choices": [{"index": 0, "message": {"role": "assist'
