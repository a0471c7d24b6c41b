"""One render process as the pool sees it (:mod:`duly.delivery.rendering.pool`): started as ``python -m
duly.delivery.rendering.worker`` without the parent's secrets, spoken to over pipes, killed.

The protocol: length-prefixed pickles over the worker's stdin and stdout. The parent
sends ``(op, request)``; the worker answers ``("ok", result)`` or ``("fail", error)``, and
may ask first for a template's source kept in the database (``("source", filename)``) or
an acknowledge link (``("ack", ...)``), which only the parent can give. What the worker
sends is unpickled with no classes allowed (only str, int, dict, list, tuple, None).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any

from duly.core.model import RenderLimits
from duly.delivery.rendering import Renderer, RenderError, RenderLimitExceeded

__all__: list[str] = []

log = logging.getLogger("duly.render")

# A worker that has not said "ready" this long after it was started is given up on.
START_TIMEOUT = 60.0
_HEADER = struct.Struct(">I")
# Environment variables a render process does not inherit (DULY_BASE_URL it keeps: sample
# acknowledge links use it).
_SECRET_NAME = re.compile(
    r"SECRET|PASSW|TOKEN|KEY|CREDENTIAL|AUTH|DATABASE|DSN|^DULY_(?!BASE_URL$)", re.IGNORECASE
)


class _Dead(Exception):
    """The worker's pipe closed: it died or was killed."""


class _NotSent(Exception):
    """The worker was dead before it got the request: try another."""


class _Strict(pickle.Unpickler):
    """Unpickles plain data only (and dates, times, decimals: a webhook body may hold
    them): a worker can never make the parent build any other object."""

    SAFE = frozenset(
        {
            ("datetime", "date"),
            ("datetime", "datetime"),
            ("datetime", "time"),
            ("datetime", "timedelta"),
            ("datetime", "timezone"),
            ("decimal", "Decimal"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a render worker may not send {module}.{name}")


class _Worker:
    """One render process and the bytes read from it so far."""

    def __init__(self) -> None:
        # no secrets: a render process needs none (acknowledge links are signed here)
        env = {k: v for k, v in os.environ.items() if not _SECRET_NAME.search(k)}
        env["PYTHONUNBUFFERED"] = "1"
        # the status pipe: the worker writes the part it is rendering; read on a timeout
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        os.set_blocking(status_w, False)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "duly.delivery.rendering.worker", str(status_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                pass_fds=(status_w,),
                env=env,
            )
        finally:
            os.close(status_w)
        self.status = status_r
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.fd = self.proc.stdout.fileno()
        self.buffer = bytearray()
        self.ready = False
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: Any) -> None:
        self.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def send_bytes(self, data: bytes) -> None:
        try:
            self.stdin.write(_HEADER.pack(len(data)) + data)
            self.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise _Dead from None

    def receive(self, deadline: float) -> Any:
        """The next message, or TimeoutError at ``deadline`` (time.monotonic())."""
        while True:
            if len(self.buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= _HEADER.size + size:
                    data = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
                    del self.buffer[: _HEADER.size + size]
                    try:
                        return _Strict(io.BytesIO(data)).load()
                    except Exception:  # not ours to trust any more: it is killed
                        log.warning("render worker %s sent what cannot be read", self.pid)
                        raise _Dead from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                readable, _, _ = select.select([self.fd], [], [], left)
            except (OSError, ValueError):
                raise _Dead from None
            if not readable:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise _Dead
            self.buffer += chunk

    def poll_ready(self) -> bool:
        """True once the worker has said it is ready (never blocks)."""
        if not self.ready:
            try:
                readable, _, _ = select.select([self.fd], [], [], 0)
            except (OSError, ValueError):
                return False
            if readable:
                try:
                    self.wait_ready()
                except (TimeoutError, _Dead):
                    return False
        return self.ready

    def wait_ready(self) -> None:
        if self.ready:
            return
        message = self.receive(self.started + START_TIMEOUT)
        if not (isinstance(message, tuple) and message[:1] == ("ready",)):
            raise _Dead
        self.ready = True

    def status_lines(self) -> list[tuple[int, float, str]]:
        """What the worker wrote on the status pipe since the last call: ``(item, start
        time, part)`` per part it started (drains the pipe, so it never fills)."""
        data = b""
        while True:
            try:
                chunk = os.read(self.status, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            data += chunk
        out = []
        for line in data.decode(errors="replace").splitlines():
            fields = line.split(" ", 2)
            if len(fields) == 3:
                try:
                    out.append((int(fields[0]), float(fields[1]), fields[2]))
                except ValueError:
                    continue
        return out

    def signal_kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL, reap, close the pipes. Only by the thread that holds the worker (or
        when nobody does)."""
        self.signal_kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            log.warning("render worker %s did not end after SIGKILL", self.pid)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            os.close(self.status)
        except OSError:
            pass

    def exit_reason(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "it stopped answering"
        if code < 0:
            try:
                return f"it was ended by {signal.Signals(-code).name}"
            except ValueError:
                return f"it was ended by signal {-code}"
        return f"it exited with status {code}"


# --------------------------------------------------------------------------- messages


def _common(renderer: Renderer) -> dict[str, Any]:
    """What every render request of ``renderer`` says about it."""
    return {
        "templates_dir": str(renderer.templates_dir) if renderer.templates_dir else None,
        "has_overrides": renderer._loader_overrides is not None,
        "ack_links": renderer.ack_links is not None,
        "limits": _limits_dict(renderer.limits),
    }


def _known(renderer: Renderer, base: str) -> dict[str, str | None]:
    """The two files every render of ``base`` reads, sent along: no round trip for them."""
    overrides = renderer._loader_overrides
    if overrides is None:
        return {}
    return {f"{base}.{ext}": overrides(f"{base}.{ext}") for ext in ("txt", "html")}


def _part_of(seen: list[tuple[int, float, str]], item: int) -> str | None:
    """The last part item ``item`` started, from the status lines."""
    parts = [p for i, _, p in seen if i == item and p not in ("", "-")]
    return parts[-1] if parts else None


def _limits_dict(limits: RenderLimits) -> dict[str, Any]:
    return {
        "timeout": limits.timeout,
        "max_output": limits.max_output,
        "max_memory": limits.max_memory,
        "workers": limits.workers,
    }


def _limits_of(request: dict[str, Any]) -> RenderLimits:
    return RenderLimits(**request["limits"])


def _mb(n: int) -> str:
    return f"{n / 1_000_000:g} MB"


def _answer_source(renderer: Renderer | None, filename: str) -> tuple[str, Any]:
    overrides = renderer._loader_overrides if renderer is not None else None
    try:
        return ("source", overrides(filename) if overrides is not None else None)
    except Exception as exc:  # a database hiccup: the render fails, the worker lives
        return ("error", f"cannot read template {filename}: {exc}")


def _answer_ack(
    renderer: Renderer | None, rule: str, ref: str, recipient: str | None, days: int
) -> tuple[str, Any]:
    links = renderer.ack_links if renderer is not None else None
    if links is None:
        return ("error", "ack_link(): acknowledge links are not configured")
    try:
        return ("ack", links.url(rule, ref, recipient, max_age_days=days))
    except Exception as exc:
        return ("error", f"ack_link(): {exc}")


def _error_of(info: dict[str, Any]) -> RenderError:
    if info.get("limit"):
        return RenderLimitExceeded(
            info["message"], limit=info["limit"], template=info["template"], line=info["line"]
        )
    return RenderError(
        info["message"], template=info["template"], line=info["line"], kind=info["kind"]
    )
