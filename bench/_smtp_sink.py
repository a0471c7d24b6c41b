"""SMTP sinks for the benchmarks: a server in a subprocess (its own GIL, its own CPU, read
separately) that accepts every message and counts it.

- ``aiosmtpd``: aiosmtpd's ``Controller`` with a discarding handler (what
  ``bench/dispatch.py`` uses). aiosmtpd reads pipelined commands correctly but does not
  advertise PIPELINING; ``pipelining=True`` adds it to the EHLO reply (as Postfix, Exim and
  every large relay do), so the client's pipelined path can be measured against it.
- ``lean``: a minimal asyncio SMTP server (one ``Protocol``, no streams): it parses the
  protocol (greeting, EHLO/HELO, MAIL, RCPT, DATA with the end-of-data dot, RSET, NOOP,
  QUIT, in any pipelined grouping), answers each command, counts the messages whose dot it
  acknowledged; ``pipelining`` decides whether EHLO offers PIPELINING. It exists so that a
  measurement of the client is not a measurement of aiosmtpd: with aiosmtpd the sink takes
  about as much CPU as the client.

``sink(kind, pipelining)`` is a context manager yielding a :class:`Sink` (port, pid, and
``received()`` which stops the server and returns its count).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

AIOSMTPD = r"""
import socket, sys
from aiosmtpd.controller import Controller

PIPELINING = sys.argv[1] == "1"

class Discard:
    count = 0
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if PIPELINING:
            responses.insert(-1, "250-PIPELINING")
        return responses
    async def handle_DATA(self, server, session, envelope):
        Discard.count += 1
        return "250 OK: discarded"

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ctl = Controller(Discard(), hostname="127.0.0.1", port=port)
ctl.start()
print(port, flush=True)
sys.stdin.read()  # until the parent closes it
ctl.stop()
print(Discard.count, flush=True)
"""

LEAN = r"""
import asyncio, sys

PIPELINING = sys.argv[1] == "1"
EHLO = (
    b"250-sink.test\r\n" + (b"250-PIPELINING\r\n" if PIPELINING else b"")
    + b"250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n"
)
count = 0

class Session(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
        self.data = False  # inside DATA: until CRLF.CRLF
        self.mail = False
        self.rcpts = 0
        transport.write(b"220 sink.test ESMTP\r\n")

    def data_received(self, chunk):
        global count
        buf = self.buf + chunk
        out = []
        pos = 0
        while True:
            if self.data:
                # from the DATA line's CRLF on: the body ends at CRLF . CRLF
                end = buf.find(b"\r\n.\r\n", pos)
                if end < 0:
                    break
                pos = end + 5
                self.data = self.mail = False
                self.rcpts = 0
                count += 1
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl]
            pos = nl + 2
            verb = line[:4].upper()
            if verb == b"MAIL":
                self.mail = True
                out.append(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                if self.mail:
                    self.rcpts += 1
                    out.append(b"250 2.1.5 Ok\r\n")
                else:
                    out.append(b"503 5.5.1 Error: need MAIL command\r\n")
            elif verb == b"DATA":
                if self.rcpts:
                    self.data = True
                    pos = nl  # keep the CRLF: an empty body is CRLF . CRLF
                    out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                else:
                    out.append(b"554 5.5.1 Error: no valid recipients\r\n")
            elif verb == b"EHLO":
                out.append(EHLO)
            elif verb == b"HELO":
                out.append(b"250 sink.test\r\n")
            elif verb == b"RSET":
                self.mail = False
                self.rcpts = 0
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"NOOP":
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.t.write(b"".join(out))
                self.t.close()
                return
            else:
                out.append(b"502 5.5.2 Error: command not recognized\r\n")
        self.buf = buf[pos:]
        if out:
            self.t.write(b"".join(out))

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Session, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
    server.close()
    print(count, flush=True)

asyncio.run(main())
"""


@dataclass
class Sink:
    kind: str
    pipelining: bool
    port: int
    pid: int
    received: Callable[[], int]

    @property
    def label(self) -> str:
        return f"{self.kind} sink, PIPELINING {'offered' if self.pipelining else 'not offered'}"


@contextmanager
def sink(kind: str = "aiosmtpd", pipelining: bool = False) -> Iterator[Sink]:
    """A discarding SMTP server in a subprocess (see the module docstring)."""
    code = {"aiosmtpd": AIOSMTPD, "lean": LEAN}[kind]
    p = subprocess.Popen(
        [sys.executable, "-c", code, "1" if pipelining else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdin is not None and p.stdout is not None
    result: dict[str, int] = {}

    def received() -> int:
        if "n" not in result:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.close()
            result["n"] = int(p.stdout.readline() or -1)
            p.wait(10)
        return result["n"]

    try:
        port = int(p.stdout.readline())
        yield Sink(kind, pipelining, port, p.pid, received)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


_HZ = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / _HZ


def add_options(ap: argparse.ArgumentParser) -> None:
    """``--sink`` and ``--pipelining`` for a benchmark that drains to a sink."""
    ap.add_argument("--sink", choices=["aiosmtpd", "lean"], default="aiosmtpd")
    ap.add_argument("--pipelining", action="store_true", help="the sink offers PIPELINING")


@contextmanager
def drain_sink(a: argparse.Namespace) -> Iterator[tuple[int, Callable[[], int]]]:
    """The sink ``add_options`` chose, as ``bench/dispatch.py``'s ``smtp_sink()`` yields it
    (port, received); its own CPU during the block is printed when the block ends, since
    the drain's figure for its children counts it with the render processes."""
    with sink(a.sink, a.pipelining) as s:
        c0 = cpu_of(s.pid)
        spent: list[float] = []

        def received() -> int:
            if not spent:
                spent.append(cpu_of(s.pid) - c0)
            return s.received()

        yield s.port, received
        if spent:
            print(f"sink: {s.label}; its CPU {spent[0]:.2f} s (counted in the children's)")
