"""A real gateway for integration tests: uvicorn worker processes on loopback, sharing the test's
PostgreSQL database and cache, plus a TCP proxy that can cut the database away like an outage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def database_url(host: str = "127.0.0.1", port: int | None = None) -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db.get('USER') or 'postgres'}@{host}:{port or db.get('PORT') or 5432}/{db['NAME']}"


@dataclass
class Server:
    url: str
    pid: int

    def kill(self) -> None:
        """A crash: every gateway process dies at once, mid-call."""
        os.killpg(self.pid, signal.SIGKILL)


@contextmanager
def gateway_server(*, workers: int = 2, db_port: int | None = None, **env_overrides: str):
    """Serve the gateway from separate processes on the committed state of the test database."""
    assert connection.vendor == "postgresql", "the multi-process gateway needs PostgreSQL"
    port = free_port()
    cache = settings.CACHES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(port=db_port),
        "SECRET_KEY": settings.SECRET_KEY,
        "DB_POOL_TIMEOUT": "2",
        "LOG_LEVEL": "WARNING",
        **env_overrides,
    }
    if "REDIS_URL" not in os.environ:
        env["FILE_CACHE_DIR"] = cache["LOCATION"]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "gateway_project.asgi:application", "--host", "127.0.0.1", "--port",
         str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    server = Server(url=f"http://127.0.0.1:{port}", pid=process.pid)
    base = server.url
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway server did not start")
            time.sleep(0.1)
        yield server
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)

