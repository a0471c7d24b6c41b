"""A render process (``python -m duly.renderworker``), started and killed by
:mod:`duly.renderpool`: renders one request at a time, under ``RLIMIT_AS`` and
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


def _vm_size() -> int | None:
    """This process's virtual size in bytes (what RLIMIT_AS counts), from /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _set_limits(limits: dict[str, Any]) -> None:
    if resource is None:
        return
    size = _vm_size()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if size is not None:
        soft = size + int(limits["max_memory"])
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = math.ceil(used + float(limits["timeout"]) + 2)
    if cpu_hard != resource.RLIM_INFINITY:
        cpu = min(cpu, cpu_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu_hard))


def _clear_limits() -> None:
    if resource is None:
        return
    for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU):
        _, hard = resource.getrlimit(which)
        resource.setrlimit(which, (hard, hard))


class _Worker:
    def __init__(self, channel: _Channel, status: int | None) -> None:
        from duly.ack import AckLinks
        from duly.render import Renderer

        self.channel = channel
        self.status: int | None = status
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
        """Tell the parent which part is rendering, on the status pipe it reads only when
        a render times out (so the error names the file) and drains after each render."""
        if self.status is not None:
            try:
                os.write(self.status, part.encode()[:200] + b"\n")
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
        from duly.model import RenderLimits
        from duly.render import Renderer

        limits = RenderLimits(**req["limits"])
        key = (req["templates_dir"], limits.max_output, req["has_overrides"], req["ack_links"])
        r = self.renderers.get(key)
        if r is None:
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
        if op == "webhook_body":
            from duly.webhooks.outbox import render_body

            return render_body(req["body"], req["context"])
        raise ValueError(f"unknown request {op!r}")

    def serve(self) -> None:
        from duly.render import RenderError, RenderLimitExceeded

        self.channel.send(("ready", os.getpid()))
        while True:
            try:
                op, req = self.channel.receive()
            except EOFError:
                return
            self.request = req
            what = f"{req.get('name')}.{req.get('channel')}" if op == "render" else "body"
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
                _set_limits(limits)
                try:
                    result = self.handle(op, req)
                finally:
                    _clear_limits()
                reply: tuple[str, Any] = ("ok", result)
            except RenderLimitExceeded as exc:
                info = _info(exc, "limit")
                info["message"] = exc.reason.rsplit(" (", 1)[0]
                info["limit"] = exc.limit
                reply = ("fail", info)
            except RenderError as exc:
                if isinstance(exc.__cause__, MemoryError):
                    reply = ("fail", {**over_memory, "template": exc.template, "line": exc.line})
                else:
                    reply = ("fail", _info(exc, exc.kind))
            except MemoryError:
                reply = ("fail", over_memory)
            except Exception as exc:  # e.g. a webhook body's BodyTemplateError
                reply = (
                    "fail",
                    {"message": str(exc), "template": None, "line": None, "kind": "data"},
                )
            finally:
                self.request = {}
            self.channel.send(reply)
            if reply[0] == "fail" and reply[1].get("limit") == "render.max_memory":
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
