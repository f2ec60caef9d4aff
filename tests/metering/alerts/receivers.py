"""Loopback HTTP receivers for alert deliveries: they record every request and answer from a script."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    def json(self):
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers the scripted statuses in order, then `default`; `delay` seconds before each answer."""

    statuses: list[int] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    secret: str | None = None  # when set, requests with a bad signature get 401
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def successes(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} request(s), got {len(self.requests)}")


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's own check, written from the documented scheme (not the gateway's code)."""
    timestamp = headers.get("X-Gateway-Timestamp", "")
    signature = headers.get("X-Gateway-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def start(receiver: Receiver) -> Receiver:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items()}
            with receiver.lock:
                index = len(receiver.requests)
                status = receiver.statuses[index] if index < len(receiver.statuses) else receiver.default
                if receiver.secret is not None and not signature_ok(receiver.secret, headers, body):
                    status = 401
                receiver.requests.append(Received(self.path, headers, body, status))
            if receiver.delay:
                time.sleep(receiver.delay)
            payload = b'{"ok": %s}' % (b"true" if status < 300 else b"false")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up (timeout tests)

        def log_message(self, *args):
            pass

    receiver.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.server.daemon_threads = True
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver


def stop(receiver: Receiver) -> None:
    if receiver.server is not None:
        receiver.server.shutdown()
        receiver.server.server_close()
