"""The one local HTTP server the fakes at the network edge run on: ``http.server`` in a
daemon thread on 127.0.0.1 (a free port), reached by the code under test over a real socket.

A fake subclasses :class:`LocalServer` and says how it answers one request::

    class Echo(LocalServer):
        methods = ("POST",)

        def respond(self, request: Incoming) -> Reply:
            return Reply(200, request.body)

    with Echo() as echo:
        httpx.post(echo.url, content=b"hi")

Each request is read whole (``Content-Length``) and answered with ``Content-Type:
application/json`` (after the reply's own headers) and its ``Content-Length``; a client
that gave up before the answer (a timeout test) is ignored. Methods not in ``methods`` get
http.server's 501.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = ["Incoming", "LocalServer", "Reply"]


@dataclass(frozen=True)
class Incoming:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any) -> Reply:
        return cls(status, json.dumps(document).encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: ClassVar[LocalServer]

    def serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = Incoming(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            self.rfile.read(length),
        )
        reply = self.owner.respond(request)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalServer:
    """Start, stop, ``with`` and :attr:`url` for a fake; :meth:`respond` is the fake's own."""

    host: str = "127.0.0.1"
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST")
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def respond(self, request: Incoming) -> Reply:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        serve = {f"do_{method}": _Handler.serve for method in self.methods}
        handler = type("Handler", (_Handler,), {"owner": self, **serve})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
