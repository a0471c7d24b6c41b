"""Render processes: every render runs in a small pool of worker processes that are killed
when a render goes over its time or memory limit.

Why processes: a template runs in Jinja's sandbox, but a single C-level operation
(``'x' * 10**9``, a huge ``|join``, ``s.replace('', s)``) can run for minutes or take
gigabytes before Python regains control, and a Python thread cannot be stopped from
outside. :mod:`duly.delivery.rendering.sandbox` refuses the operations whose size it can see coming; this module
is the bound for everything else:

- each worker (``python -m duly.delivery.rendering.worker``) renders one request at a time, with
  ``RLIMIT_AS`` set to its current size plus ``render.max_memory`` (an allocation over it
  fails with MemoryError, reported as ``render.max_memory``) and ``RLIMIT_CPU`` a little
  above ``render.timeout`` (so a worker whose parent died can never spin for long);
- the caller waits at most ``render.timeout`` (wall clock, from the moment a ready worker
  has the request) and then kills the worker (SIGKILL) and raises
  :class:`~duly.delivery.rendering.RenderLimitExceeded`; a new worker is started in its place at once,
  and its start-up time is never counted against a render;
- :meth:`RenderPool.close` kills every worker, so renders in flight fail at once: a
  process stop never waits on a runaway render;
- deliveries always get a worker eventually (each render ends within its timeout);
  *interactive* renders (previews, save checks) may hold at most ``workers - 1`` of them
  (so deliveries always have one), at most ``4 * workers`` of them wait, each for at most
  ``timeout + 3`` seconds, and otherwise get :class:`~duly.delivery.rendering.RenderBusy` at once.

The render processes themselves — starting one without secrets, the pipe protocol, killing
one — are in :mod:`duly.delivery.rendering.process`.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from duly.core.model import Recipient, RenderLimits
from duly.delivery.rendering import (
    RenderBusy,
    Rendered,
    Renderer,
    RenderError,
    RenderLimitExceeded,
    RenderRequest,
)
from duly.delivery.rendering.process import (
    _answer_ack,
    _answer_source,
    _common,
    _Dead,
    _error_of,
    _known,
    _limits_of,
    _mb,
    _NotSent,
    _part_of,
    _Worker,
)

__all__ = ["RenderPool", "shared_pool"]

log = logging.getLogger("duly.render")

# An interactive render waits this long beyond the timeout for a free worker.
INTERACTIVE_GRACE = 3.0
# A delivery waits for a free worker at most this many timeouts (each render ends within
# one, so this only trips when the pool cannot start workers at all).
DELIVERY_WAIT_TIMEOUTS = 30
# Renderer.render_many sends at least this many renders in one message to a worker (if it
# has them), and at most MAX_BATCH: the items are shared out evenly over the workers in
# between, so a dispatcher's batch of 200 costs each worker one or two round trips.
BATCH = 16
MAX_BATCH = 64


class RenderPool:
    """Up to ``size`` render processes, shared by every Renderer using this pool;
    thread-safe. See the module docstring for the guarantees."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._interactive_busy = 0
        self._interactive_waiting = 0
        self._generation = 0  # bumped by close(): renders in flight then fail
        self.kills = 0  # workers killed over a limit (tests, metrics)
        self._executor: ThreadPoolExecutor | None = None  # for render_many

    # ------------------------------------------------------------------ life cycle

    def start(self, size: int | None = None) -> None:
        """Start workers up to ``size`` (which also raises the pool's size) now."""
        with self._cond:
            if size is not None and size > self.size:
                self.size = size
            while len(self._all) < self.size:
                self._spawn_locked()

    def close(self) -> None:
        """Kill every worker now; renders in flight fail with a RenderError."""
        with self._cond:
            self._generation += 1
            idle = list(self._idle)
            busy = [w for w in self._all if w not in idle]
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
        for w in idle:
            w.kill()
        for w in busy:
            # only the signal: the thread rendering with it sees the pipe close and cleans
            # up (its file descriptors are never closed under it)
            w.signal_kill()

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in self._all)

    def _spawn_locked(self) -> _Worker:
        w = _Worker()
        self._all.add(w)
        self._idle.append(w)
        return w

    # ------------------------------------------------------------------ taking a worker

    def _acquire(self, limits: RenderLimits, interactive: bool, template: str) -> _Worker:
        if limits.workers > self.size:
            self.start(limits.workers)
        wait = (
            limits.timeout + INTERACTIVE_GRACE
            if interactive
            else limits.timeout * DELIVERY_WAIT_TIMEOUTS
        )
        deadline = time.monotonic() + wait
        busy = RenderBusy(
            "every render process is busy; try again in a few seconds",
            retry_after=max(1, math.ceil(limits.timeout)),
            template=template,
        )
        with self._cond:
            if interactive:
                if self._interactive_waiting >= 4 * self.size:
                    raise busy
                self._interactive_waiting += 1
            try:
                while True:
                    share = max(1, self.size - 1)
                    allowed = not interactive or self._interactive_busy < share
                    # an idle worker that has ended (it never started, or died since) is
                    # replaced rather than handed out
                    for dead in [w for w in self._idle if w.proc.poll() is not None]:
                        self._idle.remove(dead)
                        self._all.discard(dead)
                        dead.kill()
                    if allowed and (self._idle or len(self._all) < self.size):
                        # a worker that is ready first; one still starting, else a new one
                        ready = [w for w in self._idle if w.poll_ready()]
                        w = (ready or self._idle or [self._spawn_locked()])[-1]
                        self._idle.remove(w)
                        if interactive:
                            self._interactive_busy += 1
                        return w
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if interactive:
                            raise busy
                        raise RenderError(
                            f"no render process came free in {wait:.0f} s", template=template
                        )
                    self._cond.wait(left)
            finally:
                if interactive:
                    self._interactive_waiting -= 1

    def _release(self, w: _Worker, interactive: bool, ok: bool, generation: int) -> None:
        with self._cond:
            if interactive:
                self._interactive_busy -= 1
            if ok and generation == self._generation and w in self._all:
                self._idle.append(w)
            else:
                self._all.discard(w)
                if generation == self._generation:
                    # replaced at once: its start-up overlaps the next render's wait
                    while len(self._all) < self.size:
                        self._spawn_locked()
            self._cond.notify()
        if not ok:
            w.kill()

    # ------------------------------------------------------------------ rendering

    def render(
        self,
        renderer: Renderer,
        name: str,
        channel: str,
        context: dict[str, Any],
        *,
        recipient: Recipient | None,
        timezone: str | None,
        locale: str | None,
    ) -> Rendered:
        """Render in a worker (see Renderer.render). Raises RenderError."""
        base = f"{name}.{channel}"
        request = {
            **_common(renderer),
            "name": name,
            "channel": channel,
            "context": context,
            "recipient": recipient,
            "timezone": timezone,
            "locale": locale,
            "known": _known(renderer, base),
        }
        result = self.run("render", request, renderer, base)
        return Rendered(title=result["title"], text=result["text"], html=result["html"])

    def render_strings(
        self,
        renderer: Renderer,
        sources: dict[str, str],
        context: dict[str, Any],
        *,
        recipient: Recipient | None,
        timezone: str | None,
        locale: str | None,
        what: str,
    ) -> dict[str, str]:
        """Renderer.render_strings in a worker. Raises RenderError."""
        request = {
            **_common(renderer),
            "sources": sources,
            "context": context,
            "recipient": recipient,
            "timezone": timezone,
            "locale": locale,
            "what": what,
        }
        return dict(self.run("strings", request, renderer, what))

    def render_many(
        self, renderer: Renderer, items: Sequence[RenderRequest]
    ) -> list[Rendered | RenderError]:
        """Renderer.render_many: the items in batches of BATCH to MAX_BATCH per message to a
        worker (one round trip per batch, not per item), ``renderer.limits.workers`` side by
        side. Each item still has its own timeout: the worker notes when each item starts
        on its status pipe, and the parent, woken at a deadline, kills the worker only when
        the item being rendered has run longer than the timeout; the other items of that
        batch are then rendered again by another worker."""
        out: list[Rendered | RenderError | None] = [None] * len(items)
        per = max(BATCH, min(MAX_BATCH, math.ceil(len(items) / max(1, renderer.limits.workers))))
        batches = deque(list(range(i, min(i + per, len(items)))) for i in range(0, len(items), per))
        lock = threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    if not batches:
                        return
                    ids = batches.popleft()
                while ids:  # what is left of it after a runaway item was killed
                    ids = self._render_batch(renderer, items, ids, out)
                    if ids and ids[0] == -1:  # not sent: one by one
                        for i in ids[1:]:
                            try:
                                out[i] = renderer.render(**items[i])
                            except RenderError as exc:
                                out[i] = exc
                        ids = []

        if self._executor is None:
            with self._cond:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(8, thread_name_prefix="duly-render")
        helpers = [
            self._executor.submit(drain)
            for _ in range(min(len(batches), max(1, renderer.limits.workers)) - 1)
        ]
        drain()  # this thread takes its share too
        for h in helpers:
            h.result()
        return [r if r is not None else RenderError("not rendered") for r in out]

    def _render_batch(
        self,
        renderer: Renderer,
        items: Sequence[RenderRequest],
        ids: list[int],
        out: list[Rendered | RenderError | None],
    ) -> list[int]:
        """Render ``items[i] for i in ids`` in one worker into ``out``; the ids still to
        render (after a runaway item was killed, without it), else []; ``[-1, *ids]`` when
        the worker was dead before it got them."""
        limits = renderer.limits
        common = _common(renderer)
        batch = []
        for i in ids:
            item = items[i]
            batch.append(
                {
                    "name": item["name"],
                    "channel": item["channel"],
                    "context": dict(item["context"]),
                    "recipient": item.get("recipient"),
                    "timezone": item.get("timezone"),
                    "locale": item.get("locale"),
                    "known": _known(renderer, f"{item['name']}.{item['channel']}"),
                }
            )
        what = f"{items[ids[0]]['name']}.{items[ids[0]]['channel']}"
        try:
            payload = pickle.dumps(
                ("render_many", {"common": common, "items": batch}),
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        except Exception:
            # one item's data cannot be passed: render each alone, so only it fails
            for i in ids:
                try:
                    out[i] = renderer.render(**items[i])
                except RenderError as exc:
                    out[i] = exc
            return []
        w = self._acquire(limits, renderer.interactive, what)
        generation = self._generation
        ok = False
        seen: list[tuple[int, float, str]] = []
        try:
            try:
                w.wait_ready()
            except (TimeoutError, _Dead):
                error = RenderError(
                    f"a render process could not be started ({w.exit_reason()})",
                    template=what,
                    kind="unavailable",
                )
                for i in ids:
                    out[i] = error
                return []
            w.status_lines()
            sent = time.monotonic()
            deadline = sent + limits.timeout
            try:
                try:
                    w.send_bytes(payload)
                except _Dead:
                    if generation != self._generation:
                        raise
                    # the worker died while idle: render these one by one (each with its
                    # own retry on another worker) once this one is released
                    ok = False
                    return [-1, *ids]
                while True:
                    try:
                        message = w.receive(deadline)
                    except TimeoutError:
                        seen += w.status_lines()
                        current = max((s[0] for s in seen), default=0)
                        began = min((s[1] for s in seen if s[0] == current), default=sent)
                        if time.monotonic() < began + limits.timeout:
                            deadline = began + limits.timeout  # an earlier item was slow
                            continue
                        self.kills += 1
                        part = _part_of(seen, current) or what
                        log.warning(
                            "render of %s took over %s s: render process killed",
                            part,
                            limits.timeout,
                        )
                        out[ids[current]] = RenderLimitExceeded(
                            f"render took longer than {limits.timeout:g} s",
                            limit="render.timeout",
                            template=part,
                        )
                        return ids[:current] + ids[current + 1 :]
                    kind = message[0]
                    if kind == "source":
                        w.send(_answer_source(renderer, message[1]))
                    elif kind == "ack":
                        w.send(_answer_ack(renderer, *message[1:]))
                    elif kind == "many":
                        w.status_lines()
                        ok = True
                        for i, (status, value) in zip(ids, message[1], strict=True):
                            if status == "ok":
                                out[i] = Rendered(value["title"], value["text"], value["html"])
                            else:
                                out[i] = _error_of(value)
                                if value.get("limit") == "render.max_memory":
                                    ok = False  # the worker exits: replace it
                        return []
                    else:
                        raise _Dead
            except _Dead:
                seen += w.status_lines()
                if generation != self._generation:
                    stopped = RenderError(
                        "render stopped: the render processes were shut down", template=what
                    )
                    for i in ids:
                        out[i] = stopped
                    return []
                w.kill()
                current = max((s[0] for s in seen), default=0)
                out[ids[current]] = RenderError(
                    f"the render process ended during the render ({w.exit_reason()}); a "
                    f"template that needs more than {_mb(limits.max_memory)} goes over "
                    "render.max_memory",
                    template=_part_of(seen, current) or what,
                )
                return ids[:current] + ids[current + 1 :]
        finally:
            self._release(w, renderer.interactive, ok, generation)

    def run(self, op: str, request: dict[str, Any], renderer: Renderer | None, what: str) -> Any:
        """Send ``(op, request)`` to a worker, answer its questions, return its result. A
        worker found dead before it got the request (it died while idle) is replaced and
        the request given to another, once."""
        try:
            return self._run(op, request, renderer, what)
        except _NotSent:
            pass
        try:
            return self._run(op, request, renderer, what)
        except _NotSent:
            raise RenderError("no render process could take the render", template=what) from None

    def _run(self, op: str, request: dict[str, Any], renderer: Renderer | None, what: str) -> Any:
        limits = renderer.limits if renderer is not None else _limits_of(request)
        interactive = renderer is not None and renderer.interactive
        try:
            payload = pickle.dumps((op, request), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise RenderError(
                f"the render data cannot be passed to a render process: {exc}", template=what
            ) from None
        w = self._acquire(limits, interactive, what)
        generation = self._generation
        ok = False
        part = what
        try:
            try:
                w.wait_ready()
            except (TimeoutError, _Dead):
                raise RenderError(
                    f"a render process could not be started ({w.exit_reason()})",
                    template=what,
                    kind="unavailable",
                ) from None
            deadline = time.monotonic() + limits.timeout
            try:
                try:
                    w.send_bytes(payload)
                except _Dead:
                    if generation == self._generation:
                        raise _NotSent from None
                    raise
                while True:
                    message = w.receive(deadline)
                    kind = message[0]
                    if kind == "source":
                        w.send(_answer_source(renderer, message[1]))
                    elif kind == "ack":
                        w.send(_answer_ack(renderer, *message[1:]))
                    elif kind == "ok":
                        ok = True
                        w.status_lines()  # drained, so the pipe never fills
                        return message[1]
                    elif kind == "fail":
                        w.status_lines()
                        error = _error_of(message[1])
                        # after a MemoryError the worker exits (it may be left fragmented):
                        # it is replaced; a refusal by the sandbox leaves it as good as new
                        ok = message[1].get("limit") != "render.max_memory"
                        raise error
                    else:
                        raise _Dead
            except TimeoutError:
                part = _part_of(w.status_lines(), 0) or part
                self.kills += 1
                log.warning(
                    "render of %s took over %s s: render process killed", part, limits.timeout
                )
                raise RenderLimitExceeded(
                    f"render took longer than {limits.timeout:g} s",
                    limit="render.timeout",
                    template=part,
                ) from None
            except _Dead:
                if generation != self._generation:
                    raise RenderError(
                        "render stopped: the render processes were shut down", template=part
                    ) from None
                w.kill()
                reason = w.exit_reason()
                raise RenderError(
                    f"the render process ended during the render ({reason}); a template that "
                    f"needs more than {_mb(limits.max_memory)} goes over render.max_memory",
                    template=part,
                ) from None
        finally:
            self._release(w, interactive, ok, generation)


# --------------------------------------------------------------------------- the shared pool

_shared: RenderPool | None = None
_shared_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child must not share its parent's render processes (their pipes are the
    parent's): it starts its own on first use."""
    global _shared
    _shared = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def shared_pool() -> RenderPool:
    """The process-wide pool (started lazily, its workers killed at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RenderPool()
            atexit.register(_close_at_exit, _shared, os.getpid())
        return _shared


def _close_at_exit(pool: RenderPool, owner: int) -> None:
    if os.getpid() == owner:  # never a forked child's: the processes are its parent's
        pool.close()
