"""A ``duly simulate`` timeline (docs/reference/simulate.md): JSON lines read and checked.

Each line is ``{"at": TIME, KIND: VALUE}`` with one of :data:`KINDS`; lines come in time
order. Every structural problem raises :class:`SimulationError` naming the file, line and
field; what the engine itself refuses is found later, when the line is applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from duly.store.receipts import RECEIPT_STATUSES

__all__ = [
    "EARLIEST",
    "KINDS",
    "LATEST",
    "SimulationError",
    "TimelineLine",
    "check_until",
    "parse_at",
    "parse_hold",
    "parse_timeline",
]

KINDS = ("recipient", "subject", "delete", "event", "ack", "fail", "down", "receipt")

# Times a timeline may name: durations in a rule file are at most 1000 years
# (model.MAX_DURATION_YEARS), so planning from any of these stays within the dates Python
# can hold (years 1 to 9999).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # exclusive


class SimulationError(Exception):
    """The rule file or the timeline is invalid, or the run could not go on (exit status 2)."""


@dataclass(frozen=True, slots=True)
class TimelineLine:
    lineno: int
    at: datetime
    kind: str
    value: Any


def parse_hold(value: Any, where: str) -> datetime | str | None:
    """A subject line's ``hold_until``: an ISO 8601 time, ``"indefinite"`` (until the hold
    is cleared, spec: Hold) or null."""
    if value is None or value == "indefinite":
        return None if value is None else "indefinite"
    if not isinstance(value, str):
        raise SimulationError(
            f'{where}: subject.hold_until: expected an ISO 8601 time with offset, "indefinite" '
            f"or null, got {value!r}"
        )
    return parse_at(value, where, "subject.hold_until")


def parse_at(value: Any, where: str, field_name: str = "at") -> datetime:
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
    return _in_range(t, f"{where}: {field_name}: {value!r}")


def _in_range(t: datetime, what: str) -> datetime:
    try:
        utc: datetime | None = t.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-12:00 is in the year 10000 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise SimulationError(
            f"{what} is out of the supported range (the years {EARLIEST.year} to {LATEST.year - 1})"
        )
    return utc


def check_until(until: datetime, name: str = "until") -> datetime:
    """``until`` (aware) in UTC, or SimulationError naming ``name`` when out of range."""
    return _in_range(until, f"{name}: {until.isoformat()}")


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
        except RecursionError:
            raise SimulationError(f"{where}: the JSON is nested too deeply") from None
        except ValueError:  # Python refuses integers of more than 4300 digits
            raise SimulationError(
                f"{where}: not valid JSON: a number has too many digits"
            ) from None
        if not isinstance(obj, dict):
            raise SimulationError(f"{where}: expected a JSON object")
        if "at" not in obj:
            raise SimulationError(f"{where}: at: missing (every line needs an ISO 8601 time)")
        at = parse_at(obj["at"], where)
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
        parse_hold(v.get("hold_until"), where)
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
        parse_at(v.get("until"), where, "fail.until")
        if v.get("kind", "temporary") not in ("temporary", "permanent"):
            raise SimulationError(f'{where}: fail.kind: expected "temporary" or "permanent"')
    elif kind == "down":
        parse_at(v.get("until"), where, "down.until")
    elif kind == "receipt":
        d = _need(v, "delivery", dict, where, kind)
        for f in ("rule", "subject", "recipient", "channel"):
            _need(d, f, str, where, "receipt.delivery")
        if v.get("status") not in RECEIPT_STATUSES:
            raise SimulationError(
                f"{where}: receipt.status: expected one of {', '.join(RECEIPT_STATUSES)}"
            )
        if not isinstance(v.get("hard", False), bool):
            raise SimulationError(f"{where}: receipt.hard: expected true or false")
