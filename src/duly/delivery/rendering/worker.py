"""A render process (``python -m duly.delivery.rendering.worker``), started and killed by
:mod:`duly.delivery.rendering.pool`: renders one request at a time, under ``RLIMIT_AS`` and
``RLIMIT_CPU`` set for that request. It speaks length-prefixed pickles on stdin/stdout
(stdout is kept for the protocol; anything printed goes to stderr) and exits when stdin
closes (its parent went away)."""

from __future__ import annotations

import math
import os
import pickle
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")

try:
    import resource
except ImportError:  # pragma: no cover - not on Unix: the parent's timeout still holds
    resource = None  # type: ignore[assignment]


class _Channel:
    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self.inp, self.out = inp, out

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.out.write(_HEADER.pack(len(data)) + data)
        self.out.flush()

    def receive(self) -> Any:
        head = self.inp.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise EOFError
        (size,) = _HEADER.unpack(head)
        data = self.inp.read(size)
        if len(data) < size:
            raise EOFError
        return pickle.loads(data)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _vm_size(fd: int | None = None) -> int | None:
    """This process's virtual size in bytes (what RLIMIT_AS counts), from /proc: read
    through ``fd`` (``/proc/self/statm`` kept open) when given, else opened for this read."""
    try:
        if fd is not None:
            # the file is generated on each read from offset 0: the same figure, without
            # the cost of opening it (several times that of the read, measured)
            return int(os.pread(fd, 256, 0).split()[0]) * _PAGE
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class _Limits:
    """Sets RLIMIT_AS and RLIMIT_CPU before each render, with as few system calls as it
    can: a limit is changed only when the one in force is not the one this render needs."""

    # the address-space limit is moved only when this far from where it should be
    SLACK = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.as_soft: int | None = None
        self.cpu_soft: int | None = None
        # opened once: read before every render
        try:
            self.statm: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.statm = None

    def set(self, limits: dict[str, Any]) -> None:
        if resource is None:
            return
        size = _vm_size(self.statm)
        if size is not None:
            want = size + int(limits["max_memory"])
            if self.as_soft is None or abs(self.as_soft - want) > self.SLACK:
                _, hard = resource.getrlimit(resource.RLIMIT_AS)
                if hard != resource.RLIM_INFINITY:
                    want = min(want, hard)
                resource.setrlimit(resource.RLIMIT_AS, (want, hard))
                self.as_soft = want
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        timeout = float(limits["timeout"])
        # at least timeout + 2 s of CPU left, at most timeout + 4 s (RLIMIT_CPU counts whole
        # seconds since the process started): a runaway is killed here even if the parent
        # is gone, and the limit is not reset on every render
        if self.cpu_soft is None or not used + timeout + 2 <= self.cpu_soft <= used + timeout + 4:
            cpu = math.ceil(used + timeout + 3)
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            if hard != resource.RLIM_INFINITY:
                cpu = min(cpu, hard)
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, hard))
            self.cpu_soft = cpu


class _Worker:
    def __init__(self, channel: _Channel, status: int | None) -> None:
        from duly.delivery.ack import AckLinks
        from duly.delivery.rendering import Renderer

        self.channel = channel
        self.status: int | None = status
        self.item = 0  # the batch item being rendered
        self.limits = _Limits()
        self.request: dict[str, Any] = {}
        self.renderers: dict[tuple[Any, ...], Renderer] = {}

        worker = self

        class _AckProxy(AckLinks):
            """Acknowledge links signed by the parent (which holds the secret)."""

            def __init__(self) -> None:  # no signer here, on purpose
                pass

            def url(
                self,
                rule: str,
                subject: str,
                recipient: str | None = None,
                *,
                max_age_days: int = 30,
            ) -> str:
                return str(worker.ask(("ack", rule, subject, recipient, max_age_days), "ack"))

        self._ack_proxy = _AckProxy

    def note_part(self, part: str) -> None:
        """Tell the parent which part of which batch item starts rendering, and when
        (``ITEM MONOTONIC PART``; CLOCK_MONOTONIC is the same clock in every process), on
        the status pipe: the parent reads it only at a deadline (to name the file, and to
        time the item of a batch being rendered) and drains it after each answer."""
        if self.status is not None:
            line = f"{self.item} {time.monotonic():.6f} {part[:200]}\n"
            try:
                os.write(self.status, line.encode())
            except OSError:
                pass

    def ask(self, question: tuple[Any, ...], answer: str) -> Any:
        self.channel.send(question)
        reply = self.channel.receive()
        if reply[0] != answer:
            raise ValueError(str(reply[1]))
        return reply[1]

    def lookup(self, filename: str) -> str | None:
        known = self.request.get("known", {})
        if filename in known:
            return known[filename]  # type: ignore[no-any-return]
        return self.ask(("source", filename), "source")  # type: ignore[no-any-return]

    def renderer(self, req: dict[str, Any]) -> Any:
        from duly.core.model import RenderLimits
        from duly.delivery.rendering import Renderer

        key = (
            req["templates_dir"],
            req["limits"]["max_output"],
            req["has_overrides"],
            req["ack_links"],
        )
        r = self.renderers.get(key)
        if r is None:
            limits = RenderLimits(**req["limits"])
            r = Renderer(
                Path(req["templates_dir"]) if req["templates_dir"] else None,
                loader_overrides=self.lookup if req["has_overrides"] else None,
                ack_links=self._ack_proxy() if req["ack_links"] else None,
                limits=limits,
                isolated=False,
            )
            self.renderers[key] = r
        return r

    def handle(self, op: str, req: dict[str, Any]) -> Any:
        if op == "render":
            r = self.renderer(req).render_here(
                req["name"],
                req["channel"],
                req["context"],
                recipient=req["recipient"],
                timezone=req["timezone"],
                locale=req["locale"],
                on_part=self.note_part,
            )
            return {"title": r.title, "text": r.text, "html": r.html}
        if op == "strings":
            return self.renderer(req).render_strings_here(
                req["sources"],
                req["context"],
                recipient=req["recipient"],
                timezone=req["timezone"],
                locale=req["locale"],
                what=req["what"],
            )
        if op == "webhook_body":
            from duly.delivery.rendering.webhook_body import render_body

            return render_body(req["body"], req["context"])
        raise ValueError(f"unknown request {op!r}")

    def one(self, op: str, req: dict[str, Any]) -> tuple[str, Any]:
        """``("ok", result)`` or ``("fail", error)`` for one request (or one batch item)."""
        from duly.delivery.rendering import RenderError, RenderLimitExceeded

        self.request = req
        what = f"{req.get('name')}.{req.get('channel')}" if op == "render" else "body"
        if op == "strings":
            what = req.get("what") or "strings"
        limits = req["limits"]
        memory = f"{int(limits['max_memory']) / 1_000_000:g} MB"
        over_memory = {
            "message": f"the render needed more than {memory} of memory",
            "limit": "render.max_memory",
            "template": what,
            "line": None,
            "kind": "limit",
        }
        try:
            self.limits.set(limits)
            return ("ok", self.handle(op, req))
        except RenderLimitExceeded as exc:
            info = _info(exc, "limit")
            info["message"] = exc.reason.rsplit(" (", 1)[0]
            info["limit"] = exc.limit
            return ("fail", info)
        except RenderError as exc:
            if isinstance(exc.__cause__, MemoryError):
                return ("fail", {**over_memory, "template": exc.template, "line": exc.line})
            return ("fail", _info(exc, exc.kind))
        except MemoryError:
            return ("fail", over_memory)
        except Exception as exc:  # e.g. a webhook body's BodyTemplateError
            return ("fail", {"message": str(exc), "template": None, "line": None, "kind": "data"})
        finally:
            self.request = {}

    def serve(self) -> None:
        self.channel.send(("ready", os.getpid()))
        while True:
            try:
                op, req = self.channel.receive()
            except EOFError:
                return
            if op == "render_many":
                # one answer for the whole batch: one wake-up of the parent, not one per
                # item; each item's start goes on the status pipe, so the parent can still
                # tell which item overran its timeout
                answers = []
                for i, item in enumerate(req["items"]):
                    self.item = i
                    self.note_part("-")  # the item starts (its parts follow)
                    answers.append(self.one("render", {**req["common"], **item}))
                self.item = 0
                reply: tuple[str, Any] = ("many", answers)
            else:
                reply = self.one(op, req)
            self.channel.send(reply)
            answers_of = reply[1] if reply[0] == "many" else [reply]
            if any(a[0] == "fail" and a[1].get("limit") == "render.max_memory" for a in answers_of):
                return  # the parent replaces this process: start the next one clean


def _info(exc: Any, kind: str) -> dict[str, Any]:
    return {
        "message": exc.reason,
        "template": exc.template,
        "line": exc.line,
        "kind": kind,
        "limit": None,
    }


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when we end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print() can never corrupt the protocol
    sys.stdout = sys.stderr
    channel = _Channel(sys.stdin.buffer, out)
    status = int(sys.argv[1]) if len(sys.argv) > 1 else None
    _Worker(channel, status).serve()


if __name__ == "__main__":
    main()
