"""A real HTTP server on 127.0.0.1 (:class:`fakes.local_server.LocalServer`) that records
what arrives and answers as scripted: the receiving end for the webhook and apprise channel
tests.

    with HttpRecorder() as server:
        server.answer(500)                # the next request gets a 500, the rest a 200
        server.check = verify_signature   # or decide per request: return a status or None
        ...
        assert server.requests[0].json()["id"] == "m-1"
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from fakes.local_server import Incoming, LocalServer, Reply

__all__ = ["HttpRecorder", "Request"]

Request = Incoming


@dataclass
class _Answer:
    reply: Reply
    delay: float


@dataclass
class HttpRecorder(LocalServer):
    host: str = "127.0.0.1"
    # Called for each request after it is recorded; a status it returns is the answer.
    check: Callable[[Request], int | None] | None = None
    requests: list[Request] = field(default_factory=list)
    _script: list[_Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "PUT")

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
            self._script.append(_Answer(Reply(status, body, headers or {}), delay))

    def respond(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            return scripted.reply
        if self.check is not None:
            status = self.check(request)
            if status is not None:
                return Reply(status, b'{"error": "refused by the check"}')
        return Reply(200, b'{"ok": true}')
