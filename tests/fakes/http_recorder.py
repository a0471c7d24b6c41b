"""A real HTTP server on 127.0.0.1 (``http.server`` in a thread) that records what arrives
and answers as scripted: the receiving end for the webhook and apprise channel tests.

    with HttpRecorder() as server:
        server.answer(500)                # the next request gets a 500, the rest a 200
        server.check = verify_signature   # or decide per request: return a status or None
        ...
        assert server.requests[0].json()["id"] == "m-1"
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["HttpRecorder", "Request"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    delay: float


@dataclass
class HttpRecorder:
    host: str = "127.0.0.1"
    # Called for each request after it is recorded; a status it returns is the answer.
    check: Callable[[Request], int | None] | None = None
    requests: list[Request] = field(default_factory=list)
    _script: list[_Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def answer(
        self,
        status: int,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Script the answer to the next request (in order); unscripted ones get 200."""
        with self._lock:
            self._script.append(_Answer(status, body, headers or {}, delay))

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HttpRecorder:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                recorder._handle(self)

            do_PUT = do_POST
            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="http-recorder",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> HttpRecorder:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        request = Request(
            h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, h.rfile.read(length)
        )
        with self._lock:
            self.requests.append(request)
            scripted = self._script.pop(0) if self._script else None
        answer = scripted or _Answer(200, b'{"ok": true}', {}, 0.0)
        if scripted is None and self.check is not None:
            status = self.check(request)
            if status is not None:
                answer = _Answer(status, b'{"error": "refused by the check"}', {}, 0.0)
        if answer.delay:
            time.sleep(answer.delay)
        try:
            h.send_response(answer.status)
            for name, value in answer.headers.items():
                h.send_header(name, value)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(answer.body)))
            h.end_headers()
            h.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
