"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, on a free port, with the handler
the test gives (what it records and answers is the test's business)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from aiosmtpd.controller import Controller

H = TypeVar("H")

__all__ = ["free_port", "smtp_server"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def smtp_server(handler: H, **options: Any) -> Iterator[tuple[H, int]]:
    """Run aiosmtpd with ``handler`` until the block ends; yields (handler, port).
    ``options`` go to aiosmtpd's Controller (and its SMTP)."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()
