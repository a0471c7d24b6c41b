"""``duly simulate``: the real engine over a timeline, in virtual time (spec/simulate.md).

The planner, dispatcher, policies and renderer are the production ones; only the clock
(virtual) and the channels (captures) are swapped, and the store is an in-memory SQLite
database. Output is deterministic: the same files give the same bytes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from duly.channels.base import DeliveryError, Message, Receipt
from duly.engine.clock import VirtualClock
from duly.engine.dispatcher import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.errors import DulyError
from duly.model import Recipient, RuleFile
from duly.runtime import used_channels

__all__ = ["SimulationError", "TimelineLine", "parse_timeline", "run", "simulate_files"]

KINDS = ("recipient", "subject", "delete", "event", "ack", "fail", "down")


class SimulationError(Exception):
    """The rule file or the timeline is invalid (exit status 2)."""


@dataclass(frozen=True, slots=True)
class TimelineLine:
    lineno: int
    at: datetime
    kind: str
    value: Any


def _parse_at(value: Any, where: str, field_name: str = "at") -> datetime:
    if not isinstance(value, str):
        raise SimulationError(
            f"{where}: {field_name}: expected an ISO 8601 time with offset, got {value!r}"
        )
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise SimulationError(
            f"{where}: {field_name}: {value!r} is not an ISO 8601 time (e.g. 2026-03-12T09:00:00Z)"
        ) from None
    if t.tzinfo is None:
        raise SimulationError(f"{where}: {field_name}: {value!r} needs a UTC offset or Z")
    return t.astimezone(UTC)


def parse_timeline(text: str, path: str = "timeline.jsonl") -> list[TimelineLine]:
    """Parse and check a timeline; every structural problem raises SimulationError naming
    the file, line and field. Lines the API would refuse are found later, when applied."""
    out: list[TimelineLine] = []
    last: datetime | None = None
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SimulationError(
                f"{where}: not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise SimulationError(f"{where}: expected a JSON object")
        if "at" not in obj:
            raise SimulationError(f"{where}: at: missing (every line needs an ISO 8601 time)")
        at = _parse_at(obj["at"], where)
        kinds = [k for k in KINDS if k in obj]
        unknown = sorted(set(obj) - set(KINDS) - {"at"})
        if unknown:
            raise SimulationError(
                f"{where}: {unknown[0]}: unknown key; expected one of {', '.join(KINDS)}"
            )
        if len(kinds) != 1:
            raise SimulationError(
                f"{where}: expected exactly one of {', '.join(KINDS)}, got {len(kinds)}"
            )
        if last is not None and at < last:
            raise SimulationError(f"{where}: at: lines must be in time order ({at} < {last})")
        last = at
        kind = kinds[0]
        value = obj[kind]
        _check_shape(kind, value, where)
        out.append(TimelineLine(n, at, kind, value))
    return out


def _need(
    obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, prefix: str
) -> Any:
    if key not in obj or not isinstance(obj[key], typ):
        raise SimulationError(f"{where}: {prefix}.{key}: missing or not a {_tname(typ)}")
    return obj[key]


def _tname(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return {"str": "string", "dict": "object", "list": "list"}.get(typ.__name__, typ.__name__)


def _check_shape(kind: str, v: Any, where: str) -> None:
    if kind == "delete":
        if not isinstance(v, str) or "/" not in v:
            raise SimulationError(f'{where}: delete: expected "KIND/KEY"')
        return
    if not isinstance(v, dict):
        raise SimulationError(f"{where}: {kind}: expected an object")
    if kind == "recipient":
        _need(v, "id", str, where, kind)
        for f in ("addresses", "consent"):
            if f in v and v[f] is not None and not isinstance(v[f], dict):
                raise SimulationError(f"{where}: recipient.{f}: expected an object")
    elif kind == "subject":
        _need(v, "kind", str, where, kind)
        _need(v, "key", (str, int), where, kind)
        if "attributes" in v and not isinstance(v["attributes"], dict):
            raise SimulationError(f"{where}: subject.attributes: expected an object")
        if "recipients" in v and not isinstance(v["recipients"], dict):
            raise SimulationError(f"{where}: subject.recipients: expected an object")
        if v.get("hold_until") is not None:
            _parse_at(v["hold_until"], where, "subject.hold_until")
    elif kind == "event":
        _need(v, "id", (str, int), where, kind)
        _need(v, "name", str, where, kind)
        _need(v, "subject", str, where, kind)
        if "data" in v and not isinstance(v["data"], dict):
            raise SimulationError(f"{where}: event.data: expected an object")
    elif kind == "ack":
        _need(v, "rule", str, where, kind)
        _need(v, "subject", str, where, kind)
    elif kind == "fail":
        _need(v, "channel", str, where, kind)
        _parse_at(v.get("until"), where, "fail.until")
        if v.get("kind", "temporary") not in ("temporary", "permanent"):
            raise SimulationError(f'{where}: fail.kind: expected "temporary" or "permanent"')
    elif kind == "down":
        _parse_at(v.get("until"), where, "down.until")


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
        self.sent: list[Message] = []

    def send(self, message: Message) -> Receipt:
        f = self.failures.by_channel.get(self.name)
        if f is not None and self.clock.now() < f[0]:
            raise DeliveryError(
                f"simulated {'permanent' if f[1] else 'temporary'} failure",
                permanent=f[1],
                address=f[1],  # as a real one would: a permanent failure suppresses
            )
        self.sent.append(message)
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
) -> list[dict[str, Any]]:
    """Run the engine over ``timeline``; return the outcome rows in spec order."""
    import sqlalchemy as sa
    from sqlalchemy.pool import StaticPool

    from duly.store.tables import metadata

    err = stderr or sys.stderr
    if not timeline:
        return []
    start = timeline[0].at
    end = until or (timeline[-1].at + timedelta(days=30))
    clock = VirtualClock(start)
    db = sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    metadata.create_all(db)
    engine = Engine(rf, db, clock=clock)
    failures = _Failures()
    channels = {
        n: CaptureChannel(n, clock, failures, rf.channels[n].type if n in rf.channels else None)
        for n in set(rf.channels) | used_channels(rf)
    }
    renderer = None
    if render:
        from duly.ack import DEFAULT_BASE_URL, AckLinks, AckSigner
        from duly.render import Renderer

        # acknowledge links signed with a fixed secret in virtual time: the same files give
        # the same bytes (and the links are never valid on a real server)
        ack_links = AckLinks(
            signer=AckSigner("duly simulate", clock=clock), base_url=DEFAULT_BASE_URL
        )
        renderer = Renderer(rf.templates_dir, ack_links=ack_links)
    disp = Dispatcher(
        engine, channels, renderer, owner="simulate", send_workers=1, lease=timedelta(days=3650)
    )
    engine.plan_schedules()  # schedules start with the simulation: nothing before is caught up
    down_until: datetime | None = None
    i = 0
    while True:
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
                down_until = _parse_at(line.value["until"], "", "down.until")
                continue
            if line.kind == "fail":
                failures.by_channel[line.value["channel"]] = (
                    _parse_at(line.value["until"], "", "fail.until"),
                    line.value.get("kind", "temporary") == "permanent",
                )
                continue
            try:
                _apply(engine, line)
            except DulyError as exc:
                field_ = f" {exc.field}:" if getattr(exc, "field", None) else ""
                print(f"{timeline_path}:{line.lineno}:{field_} {exc} (line skipped)", file=err)
            continue
        if down_until is not None and clock.now() < down_until:
            continue
        down_until = None
        disp.run_once()
    with db.connect() as conn:
        rows = engine.store.outcomes(conn)
    db.dispose()
    return sorted((_format(r) for r in rows), key=_sort_key)


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
                hold_until=_parse_at(hold, "", "hold_until") if hold else None,
            )
        )
    elif line.kind == "delete":
        kind, _, key = v.partition("/")
        engine.delete_subject(kind, key)
    elif line.kind == "event":
        engine.post_event(str(v["id"]), v["name"], v["subject"], v.get("data") or {})
    elif line.kind == "ack":
        engine.acknowledge(v["rule"], v["subject"], v.get("recipient"))


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format(r: dict[str, Any]) -> dict[str, Any]:
    occ = json.loads(r["occurrence"])
    out: dict[str, Any] = {
        "at": _iso(r["at"]),
        "planned": _iso(r["planned_at"]),
        "rule": r["rule"],
        "step": r["step"] or None,
        "occurrence": occ,
        "subject": r["subject"] or None,
        "recipient": r["recipient"] or None,
        "channel": r["channel"] or None,
        "category": r["category"],
        "outcome": r["outcome"],
        "reason": r["reason"],
        "attempt": r["attempt"] or 0,
    }
    if r["title"] is not None:
        out["title"] = r["title"]
    if r["outcome"] == "sent":
        out["message"] = r["message_id"]
    if r["outcome"] == "set":
        out["changes"] = r["changes"] or {}
    return out


def _nullable(v: Any) -> tuple[int, Any]:
    if v is None:
        return (0, "")
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, float)):
        return (1, v)
    return (2, str(v))


def _sort_key(o: dict[str, Any]) -> tuple[Any, ...]:
    return (
        o["at"],
        o["rule"],
        _nullable(o["subject"]),
        _nullable(o["recipient"]),
        _nullable(o["channel"]),
        _nullable(o["step"]),
        _nullable(o["occurrence"]),
    )


def dumps_row(o: dict[str, Any]) -> str:
    return json.dumps(o, ensure_ascii=False, separators=(", ", ": "))


def table(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Rows for people, then a summary by outcome and reason."""
    cols = (
        "at",
        "rule",
        "step",
        "occurrence",
        "subject",
        "recipient",
        "channel",
        "outcome",
        "reason",
        "title",
    )
    data = [[("" if o.get(c) is None else str(o.get(c))) for c in cols] for o in rows]
    widths = [max([len(c)] + [len(d[i]) for d in data]) for i, c in enumerate(cols)]
    widths[-1] = min(widths[-1], 60)
    yield "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    yield "  ".join("-" * w for w in widths)
    for d in data:
        yield "  ".join(v[:w].ljust(w) for v, w in zip(d, widths, strict=True)).rstrip()
    summary: dict[str, int] = {}
    for o in rows:
        k = o["outcome"] + (f" ({o['reason']})" if o["reason"] else "")
        summary[k] = summary.get(k, 0) + 1
    yield ""
    yield f"{len(rows)} outcomes: " + ", ".join(f"{k}: {n}" for k, n in sorted(summary.items()))


def simulate_files(
    rules_path: str | Path,
    timeline_path: str | Path,
    *,
    until: datetime | None = None,
    render: bool = True,
    stderr: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Load both files and run. Raises SimulationError (or RuleFileError) for invalid input."""
    from duly.rules.loader import load_rules

    rf = load_rules(rules_path, check_templates=render, resolve_env=False, check_channels=False)
    p = Path(timeline_path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimulationError(f"{timeline_path}: cannot read: {exc.strerror}") from None
    timeline = parse_timeline(text, str(timeline_path))
    return run(
        rf, timeline, until=until, render=render, stderr=stderr, timeline_path=str(timeline_path)
    )
