"""``duly simulate``: the real engine over a timeline, in virtual time (docs/reference/simulate.md).

The planner, dispatcher, policies and renderer are the production ones; only the clock
(virtual) and the channels (captures) are swapped, and the store is an in-memory SQLite
database. Output is deterministic: the same files give the same bytes.

A run is bounded (:class:`Limits`): its virtual span, the outcomes it records and the real
time it takes. ``duly simulate`` has generous defaults (:data:`CLI_LIMITS`) that flags raise;
the server (``POST /v1/simulate`` and the rules page) uses stricter ones
(:data:`SERVER_LIMITS`) and runs at most :data:`SERVER_CONCURRENCY` simulations at a time
(:data:`server`). Going past a limit raises :class:`LimitExceeded`.

The timeline is read by :mod:`duly.engine.simulation.timeline` and the output written by
:mod:`duly.engine.simulation.output`; this module runs the engine between them.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from duly.core.clock import VirtualClock
from duly.core.errors import DulyError, InvalidInput
from duly.core.model import Recipient, RuleFile
from duly.delivery.channels.base import DeliveryError, Message, Receipt
from duly.engine.dispatch import Dispatcher
from duly.engine.receipts import ReceiptEvent, record_receipts
from duly.engine.runtime import used_channels
from duly.engine.service import Engine, SubjectInput
from duly.engine.simulation.output import Result, collect_rows, iso
from duly.engine.simulation.timeline import (
    KINDS,
    SimulationError,
    TimelineLine,
    check_until,
    parse_at,
    parse_hold,
    parse_timeline,
)
from duly.store.receipts import latest_provider_id
from duly.store.simulation import in_memory_database

__all__ = [
    "CLI_LIMITS",
    "KINDS",
    "DEFAULT_TAIL",
    "EngineFailed",
    "SERVER_CONCURRENCY",
    "SERVER_LIMITS",
    "LimitExceeded",
    "Limits",
    "Result",
    "SimulationError",
    "TimelineLine",
    "check_until",
    "describe_span",
    "execute",
    "parse_timeline",
    "run",
    "server",
    "ServerSimulations",
    "simulate_files",
]

DEFAULT_TAIL = timedelta(days=30)  # the run ends this long after the last line by default


class EngineFailed(SimulationError):
    """The engine failed during the run (the message names the virtual time and the error)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one run; ``None`` leaves that one unbounded.

    - ``span``: virtual time from the first line to the end of the run;
    - ``outcomes``: outcome rows recorded (what the output holds, one line each);
    - ``wall``: real seconds; checked between steps of virtual time, and the dispatcher is
      told to stop after its batch in flight, so an overrun frees its thread promptly.
    """

    span: timedelta | None = None
    outcomes: int | None = None
    wall: float | None = None


# `duly simulate`: each raised with a flag (--max-span, --max-outcomes, --timeout; the
# flags' defaults are these, written out in cli/rulefiles.py so that `duly --help` stays light).
CLI_LIMITS = Limits(span=timedelta(days=400), outcomes=100_000, wall=300.0)
# POST /v1/simulate and the rules page, which anyone with a key or a sign-in may run.
SERVER_LIMITS = Limits(span=timedelta(days=92), outcomes=10_000, wall=10.0)
SERVER_CONCURRENCY = 2  # simulations the server runs at once; more are refused as busy


class ServerSimulations:
    """How the server runs simulations: each within ``limits``, at most ``concurrency`` at
    once (a caller that finds them all taken answers busy, with :attr:`retry_after`)."""

    def __init__(self, limits: Limits = SERVER_LIMITS, concurrency: int = SERVER_CONCURRENCY):
        self.limits = limits
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self.running = 0

    @property
    def retry_after(self) -> int:
        """Seconds after which a busy caller may try again: the longest a run may take."""
        return max(1, math.ceil(self.limits.wall or 10))

    def try_enter(self) -> bool:
        """Take a place without waiting; False when every place is taken."""
        with self._lock:
            if self.running >= self.concurrency:
                return False
            self.running += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


# The one the API and the pages share (module state: one per process, as the server is).
server = ServerSimulations()


class LimitExceeded(SimulationError):
    """A run went past one of its :class:`Limits` (``limit`` names which: ``span``,
    ``outcomes`` or ``wall``); the message says by how much, in virtual and real time."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def describe_span(d: timedelta) -> str:
    """``30 days``, ``1 day``, ``36 hours``, ``90 minutes``: a span for messages."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        n = d.total_seconds() / size
        if n >= 1 or unit == "second":
            text = f"{n:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}{'' if text == '1' else 's'}"
    raise AssertionError  # pragma: no cover


@dataclass(slots=True)
class _Failures:
    by_channel: dict[str, tuple[datetime, bool]] = field(default_factory=dict)


class CaptureChannel:
    """Replaces every real channel in a simulation: records, or fails as the timeline says."""

    def __init__(
        self, name: str, clock: VirtualClock, failures: _Failures, type_: str | None = None
    ) -> None:
        self.name = name
        # the configured type, so addresses are looked up as the real channel would
        self.type = type_ or "capture"
        self.clock = clock
        self.failures = failures
        self.sent = 0  # a count: holding every message would grow with the run

    def send(self, message: Message) -> Receipt:
        f = self.failures.by_channel.get(self.name)
        if f is not None and self.clock.now() < f[0]:
            raise DeliveryError(
                f"simulated {'permanent' if f[1] else 'temporary'} failure",
                permanent=f[1],
                address=f[1],  # as a real one would: a permanent failure suppresses
            )
        self.sent += 1
        return Receipt(provider_id=f"capture:{message.message_id}")

    def close(self) -> None:
        pass


def run(
    rf: RuleFile,
    timeline: Sequence[TimelineLine],
    *,
    until: datetime | None = None,
    render: bool = True,
    stderr: TextIO | None = None,
    timeline_path: str = "timeline.jsonl",
    limits: Limits = Limits(),
) -> list[dict[str, Any]]:
    """Run the engine over ``timeline``; return the outcome rows in spec order."""
    return execute(
        rf,
        timeline,
        until=until,
        render=render,
        stderr=stderr,
        timeline_path=timeline_path,
        limits=limits,
    ).rows


def execute(
    rf: RuleFile,
    timeline: Sequence[TimelineLine],
    *,
    until: datetime | None = None,
    render: bool = True,
    stderr: TextIO | None = None,
    timeline_path: str = "timeline.jsonl",
    limits: Limits = Limits(),
    keep: int | None = None,
) -> Result:
    """Run the engine over ``timeline`` within ``limits``; keep the first ``keep`` rows.

    Raises :class:`LimitExceeded` past a limit and :class:`SimulationError` when the run
    cannot go on (an error of the engine: the message names the virtual time). A timeline
    line the engine refuses is reported on ``stderr`` with its number and skipped."""
    err = stderr or sys.stderr
    if not timeline:
        return Result([])
    start = timeline[0].at
    end = check_until(until) if until is not None else timeline[-1].at + DEFAULT_TAIL
    if limits.span is not None and end - start > limits.span:
        why = (
            ""
            if until is not None
            else f" (by default, {describe_span(DEFAULT_TAIL)} after the last line)"
        )
        raise LimitExceeded(
            "span",
            f"the run would span {describe_span(end - start)} of virtual time, from "
            f"{iso(start)} to {iso(end)}{why}; the limit is {describe_span(limits.span)}",
        )
    deadline = time.monotonic() + limits.wall if limits.wall is not None else None
    sim = _Simulation(rf, start, render)
    # the dispatcher is told to stop at the deadline, so a long batch ends with it too
    alarm = threading.Timer(limits.wall, sim.disp.stop) if limits.wall is not None else None
    try:
        if alarm is not None:
            alarm.daemon = True
            alarm.start()
        sim.loop(timeline, end, err, timeline_path, limits, deadline)
        with sim.db.connect() as conn:
            return collect_rows(sim.engine.store.iter_outcomes(conn), keep)
    finally:
        if alarm is not None:
            alarm.cancel()
        sim.db.dispose()


class _Simulation:
    """One run's engine, dispatcher, captures and clock, over a private in-memory database."""

    def __init__(self, rf: RuleFile, start: datetime, render: bool) -> None:
        self.clock = VirtualClock(start)
        self.db = in_memory_database()
        self.engine = Engine(rf, self.db, clock=self.clock)
        self.failures = _Failures()
        clock, failures = self.clock, self.failures
        channels = {
            n: CaptureChannel(n, clock, failures, rf.channels[n].type if n in rf.channels else None)
            for n in set(rf.channels) | used_channels(rf)
        }
        renderer = None
        if render:
            from duly.delivery.ack import DEFAULT_BASE_URL, AckLinks, AckSigner
            from duly.delivery.rendering import Renderer

            # acknowledge links signed with a fixed secret in virtual time: the same files
            # give the same bytes (and the links are never valid on a real server)
            ack_links = AckLinks(
                signer=AckSigner("duly simulate", clock=clock), base_url=DEFAULT_BASE_URL
            )
            renderer = Renderer(
                rf.templates_dir,
                ack_links=ack_links,
                limits=rf.render,
                template_language=rf.template_language,
            )
        self.disp = Dispatcher(
            self.engine,
            channels,
            renderer,
            owner="simulate",
            send_workers=1,
            lease=timedelta(days=3650),
        )
        # Message-IDs unkeyed, as they always were in simulations: the same files give the
        # same ids on any machine, and saved expected outputs stay valid (nothing is sent)
        from duly.engine.dispatch import message_id_for

        self.disp.message_ids = message_id_for
        self.outcomes = 0  # recorded so far
        self._last_log_id = 0

    def _count(self, limits: Limits) -> None:
        with self.db.connect() as conn:
            n, self._last_log_id = self.engine.store.count_outcomes_after(conn, self._last_log_id)
        self.outcomes += n
        if limits.outcomes is not None and self.outcomes > limits.outcomes:
            raise LimitExceeded(
                "outcomes",
                f"the run recorded more than {limits.outcomes:,} outcomes by "
                f"{iso(self.clock.now())} (virtual time); the limit is "
                f"{limits.outcomes:,} outcomes",
            )

    def _engine_failed(self, exc: Exception) -> SimulationError:
        return EngineFailed(
            f"the simulation stopped at {iso(self.clock.now())} (virtual time): the engine "
            f"failed: {type(exc).__name__}: {exc}"
        )

    def loop(
        self,
        timeline: Sequence[TimelineLine],
        end: datetime,
        err: TextIO,
        timeline_path: str,
        limits: Limits,
        deadline: float | None,
    ) -> None:
        clock, disp = self.clock, self.disp
        try:
            # schedules start with the simulation: nothing before is caught up
            self.engine.plan_schedules()
        except Exception as exc:
            raise self._engine_failed(exc) from exc
        down_until: datetime | None = None
        i = 0
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise LimitExceeded(
                    "wall",
                    f"the run took longer than {limits.wall:g} s (real time) and was stopped "
                    f"at {iso(clock.now())} (virtual time, {self.outcomes:,} outcomes so "
                    f"far); the limit is {limits.wall:g} s",
                )
            line_at = timeline[i].at if i < len(timeline) else None
            due = disp.next_due()
            if down_until is not None and due is not None and due < down_until:
                due = down_until
            if line_at is not None and (due is None or line_at <= due):
                t = line_at
            else:
                t = due
            if t is None or t > end:
                break
            clock.set(max(t, clock.now()))
            if line_at is not None and t == line_at:
                line = timeline[i]
                i += 1
                if line.kind == "down":
                    down_until = parse_at(line.value["until"], "", "down.until")
                    continue
                if line.kind == "fail":
                    self.failures.by_channel[line.value["channel"]] = (
                        parse_at(line.value["until"], "", "fail.until"),
                        line.value.get("kind", "temporary") == "permanent",
                    )
                    continue
                try:
                    _apply(self.engine, line)
                except DulyError as exc:
                    field_ = f" {exc.field}:" if getattr(exc, "field", None) else ""
                    print(f"{timeline_path}:{line.lineno}:{field_} {exc} (line skipped)", file=err)
                except Exception as exc:  # the engine would answer 500: nothing is stored
                    print(
                        f"{timeline_path}:{line.lineno}: the engine could not apply this line: "
                        f"{type(exc).__name__}: {exc} (line skipped)",
                        file=err,
                    )
                self._count(limits)
                continue
            if down_until is not None and clock.now() < down_until:
                continue
            down_until = None
            try:
                disp.run_once()
            except Exception as exc:
                raise self._engine_failed(exc) from exc
            self._count(limits)


def _apply(engine: Engine, line: TimelineLine) -> None:
    v = line.value
    if line.kind == "recipient":
        engine.put_recipient(
            Recipient(
                id=v["id"],
                name=v.get("name"),
                email=v.get("email"),
                phone=v.get("phone"),
                timezone=v.get("timezone"),
                locale=v.get("locale"),
                addresses=dict(v.get("addresses") or {}),
                consent=dict(v.get("consent") or {}),
            )
        )
    elif line.kind == "subject":
        hold = v.get("hold_until")
        engine.upsert_subject(
            SubjectInput(
                kind=v["kind"],
                key=str(v["key"]),
                attributes=v.get("attributes") or {},
                recipients=v.get("recipients") or {},
                hold_until=parse_hold(hold, "") if hold else None,
            )
        )
    elif line.kind == "delete":
        kind, _, key = v.partition("/")
        engine.delete_subject(kind, key)
    elif line.kind == "event":
        engine.post_event(str(v["id"]), v["name"], v["subject"], v.get("data") or {})
    elif line.kind == "ack":
        engine.acknowledge(v["rule"], v["subject"], v.get("recipient"))
    elif line.kind == "receipt":
        _receipt(engine, line)


def _receipt(engine: Engine, line: TimelineLine) -> None:
    """A provider's report on the latest message sent to ``receipt.delivery`` (its rule,
    subject, recipient, channel and optional step), with its effects (duly.engine.receipts)."""
    v, d = line.value, line.value["delivery"]
    with engine.db.connect() as conn:
        pmid = latest_provider_id(
            conn,
            rule=d["rule"],
            subject=d["subject"],
            recipient=d["recipient"],
            channel=d["channel"],
            step=d.get("step"),
        )
    if pmid is None:
        raise InvalidInput("receipt: nothing was sent to that delivery yet", field="receipt")
    ev = ReceiptEvent("simulate", pmid, v["status"], bool(v.get("hard", False)), line.at)
    record_receipts(engine, [ev])


def simulate_files(
    rules_path: str | Path,
    timeline_path: str | Path,
    *,
    until: datetime | None = None,
    render: bool = True,
    stderr: TextIO | None = None,
    limits: Limits = Limits(),
) -> list[dict[str, Any]]:
    """Load both files and run. Raises SimulationError (LimitExceeded past ``limits``) or
    RuleFileError for invalid input."""
    from duly.core.rules.loader import load_rules

    rf = load_rules(rules_path, check_templates=render, resolve_env=False, check_channels=False)
    p = Path(timeline_path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimulationError(f"{timeline_path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SimulationError(
            f"{timeline_path}: not UTF-8 text (byte {exc.start}); a timeline is JSON lines"
        ) from None
    timeline = parse_timeline(text, str(timeline_path))
    return run(
        rf,
        timeline,
        until=until,
        render=render,
        stderr=stderr,
        timeline_path=str(timeline_path),
        limits=limits,
    )
