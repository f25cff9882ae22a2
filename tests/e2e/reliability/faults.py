"""Network faults on loopback: a black hole, and an HTTP proxy that fails, delays or swallows requests.

Both are real sockets, so the code under test goes through its real HTTP stack (``requests``, timeouts,
keep-alive). Everything here is bounded: sockets have timeouts and ``close()`` releases every thread.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class BlackHole:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._conns.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._sock.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What the proxy does with one request.
PASS = "pass"  # forward it, return the answer
FAIL_BEFORE = "fail-before"  # answer an error without forwarding (the server never saw it)
FAIL_AFTER = "fail-after"  # forward it, drop the answer, answer an error (the server stored it)
SWALLOW = "swallow"  # forward it, never answer (a black hole after the fact)
HANG = "hang"  # never forward, never answer
ANSWER = "answer"  # answer without forwarding: the policy's status is ``(code, body bytes, content type)``

# What something between the client and MLflow answers (none of it is MLflow's word on the request).
PROXY_404 = (404, b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>", "text/html")
PROXY_413 = (413, b"<html><head><title>413 Request Entity Too Large</title></head></html>", "text/html")
PORTAL_200 = (200, b"<!DOCTYPE html><html><body>Please log in to the hotel wifi</body></html>", "text/html")
GARBAGE_200 = (200, b"\x00\x9f\x92garbage{{", "application/octet-stream")


@dataclass
class Window:
    """Answer the ``log-batch`` requests numbered ``first``..``last`` (1-based) with ``answers`` in turn."""

    first: int
    last: int
    answers: tuple = (PROXY_404, PROXY_413, PORTAL_200, GARBAGE_200)
    path: str = "runs/log-batch"
    _count: int = 0
    injected: Counter = field(default_factory=Counter)

    def __call__(self, method: str, path: str, body: bytes) -> tuple[str, object]:
        if self.path not in path:
            return PASS, None
        self._count += 1
        if not self.first <= self._count <= self.last:
            return PASS, None
        answer = self.answers[(self._count - self.first) % len(self.answers)]
        self.injected[answer[0], answer[2]] += 1
        return ANSWER, answer


@dataclass
class Seen:
    n: int
    method: str
    path: str
    action: str
    status: int | None = None


@dataclass
class EveryNth:
    """Fail every ``n``-th request, cycling through ``statuses`` and failing before / after forwarding.

    A request identical to the one that just failed (same method, path and body: a retry) is let
    through: a schedule with a fixed period would otherwise fail a retried sequence of ``n`` requests
    at the same place forever, which no real server does and no client could get past.
    """

    n: int = 3
    statuses: tuple[int, ...] = (500, 503, 429)
    modes: tuple[str, ...] = (FAIL_BEFORE, FAIL_AFTER)
    _count: int = 0
    _faults: int = 0
    _last_failed: tuple | None = None
    injected: Counter = field(default_factory=Counter)

    def __call__(self, method: str, path: str, body: bytes) -> tuple[str, int | None]:
        key = (method, path, body)
        if key == self._last_failed:
            self._last_failed = None
            return PASS, None
        self._count += 1
        if self._count % self.n:
            return PASS, None
        status = self.statuses[self._faults % len(self.statuses)]
        mode = self.modes[(self._faults // len(self.statuses)) % len(self.modes)]
        self._faults += 1
        self._last_failed = key
        self.injected[(mode, status)] += 1
        return mode, status


class FaultProxy:
    """An HTTP/1.1 reverse proxy in front of ``upstream`` whose behaviour tests switch at run time.

    ``mode`` is one of PASS, SWALLOW, HANG (for every request), or a policy
    ``(method, path, body) -> (action, status)`` such as :class:`EveryNth`. ``refuse()`` closes the
    listening socket (connections are refused) and ``listen()`` opens it again on the same port.
    429 and 503 answers carry ``Retry-After: 1``.
    """

    def __init__(self, upstream: str, port: int = 0, host: str = "127.0.0.1", listen: bool = True) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.host, self.port = host, port
        self.mode: str | Callable[[str, str, bytes], tuple[str, int | None]] = PASS
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on close: hung handlers return
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if listen:
            self.listen()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def counts(self) -> Counter:
        with self._lock:
            return Counter((s.action, s.status) for s in self.seen)

    def listen(self) -> None:
        if self._server is not None:
            return
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy._serve_one(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def refuse(self) -> None:
        """Stop listening: new connections are refused (open ones are dropped)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    def close(self) -> None:
        self._release.set()
        self.refuse()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ----------------------------------------------------------------------------
    def _decide(self, method: str, path: str, body: bytes) -> tuple[str, int | None]:
        mode = self.mode
        if callable(mode):
            with self._lock:
                return mode(method, path, body)
        return mode, None

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _serve_one(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        action, status = self._decide(handler.command, handler.path, body)
        with self._lock:
            self.seen.append(Seen(len(self.seen) + 1, handler.command, handler.path, action, status))
        if action in (SWALLOW, HANG):
            if action == SWALLOW:
                try:
                    self._forward(handler, body)
                except OSError:
                    pass
            self._release.wait(120)  # until the proxy closes; the client times out first
            handler.close_connection = True
            return
        if action == ANSWER:
            code, payload, ctype = status
            handler.send_response(code)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if action == FAIL_AFTER:
            try:
                self._forward(handler, body)
            except OSError:
                pass
        if action in (FAIL_BEFORE, FAIL_AFTER):
            payload = b'{"error_code": "INTERNAL_ERROR", "message": "injected fault"}'
            handler.send_response(status or 500)
            if status in (429, 503):
                handler.send_header("Retry-After", "1")
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        try:
            code, headers, payload = self._forward(handler, body)
        except OSError as err:  # upstream down: a gateway error, as a real proxy would answer
            code, headers, payload = 502, [], f"upstream: {err}".encode()
        handler.send_response(code)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive", "date", "server"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
