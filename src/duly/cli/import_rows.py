"""Reading the rows of ``duly import``: recipients and subjects from CSV or JSON lines, each
turned into the item the batch API takes, or refused with its line number.

Formats (docs/reference/import.md says the same for users):

- **JSON lines**: one object a line, in the batch API's shape: a recipient has ``id`` (and
  ``name``, ``email``, ``phone``, ``timezone``, ``locale``, ``addresses``, ``consent``); a
  subject has ``key`` (and ``kind``, ``attributes``, ``recipients``, ``hold_until``). An
  object may say ``"type": "recipient"`` or ``"subject"``; otherwise one with a ``key`` is
  a subject and one with only an ``id`` a recipient.
- **CSV**, with a header line. A file whose header has ``key`` holds subjects; one with
  ``id`` and no ``key`` holds recipients.
  - Recipients: ``id``, ``name``, ``email``, ``phone``, ``timezone``, ``locale``,
    ``addresses.CHANNEL``, ``consent.promotional``, ``consent.reminder``,
    ``consent.channels.CHANNEL``, ``consent.rules.RULE`` (yes/no), or ``consent`` as JSON.
  - Subjects: ``kind`` (or ``--kind``), ``key``, ``hold_until``, ``recipients.ROLE`` (an id,
    or a JSON list of ids); every other column is an attribute (``attributes.NAME`` also
    works). Cells are text unless the header gives a type: ``amount:number``,
    ``count:int``, ``paid:bool``, ``tags:json``. An empty cell leaves the field out.

Every resource is bounded: a line or cell over :data:`MAX_LINE` bytes is refused, and the
file is read a row at a time.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from pydantic import BaseModel
from pydantic import ValidationError as ModelError

from duly.api import schemas as S

__all__ = ["MAX_LINE", "HeaderError", "Rejected", "Row", "read_rows"]

MAX_LINE = 1 << 20  # bytes in one line (JSON lines) or one cell (CSV)
TYPES = ("recipient", "subject")
_RECIPIENT_FIELDS = ("id", "name", "email", "phone", "timezone", "locale")
_CELL_TYPES = ("text", "int", "number", "bool", "json")
_YES = {"true", "yes", "y", "1"}
_NO = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class Row:
    """One item for the batch API: ``type`` is recipient or subject; ``line`` is where its
    record starts in the file (1-based)."""

    line: int
    type: str
    item: dict[str, Any]
    raw: str


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be imported, and why (``field`` names the column or key)."""

    line: int
    field: str | None
    message: str
    raw: str


class HeaderError(ValueError):
    """The CSV header itself is wrong: no row of the file can be read."""


def read_rows(
    stream: IO[str], fmt: str, *, as_type: str | None = None, kind: str | None = None
) -> Iterator[Row | Rejected]:
    """Each record of ``stream`` (``fmt`` is ``csv`` or ``jsonl``), in file order."""
    if fmt == "csv":
        yield from _csv_rows(stream, as_type, kind)
    else:
        yield from _jsonl_rows(stream, as_type, kind)


# --------------------------------------------------------------------------- JSON lines


def _jsonl_rows(stream: IO[str], as_type: str | None, kind: str | None) -> Iterator[Row | Rejected]:
    for number, line in enumerate(iter(lambda: stream.readline(MAX_LINE + 1), ""), start=1):
        if len(line) > MAX_LINE:
            yield Rejected(number, None, f"line longer than {MAX_LINE} characters", line[:200])
            _skip_rest_of_line(stream)
            continue
        text = line.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            yield Rejected(number, None, f"not valid JSON: {exc}", text)
            continue
        if not isinstance(obj, dict):
            yield Rejected(number, None, "expected a JSON object", text)
            continue
        declared = obj.pop("type", None)
        if declared is not None and declared not in TYPES:
            yield Rejected(number, "type", "type must be 'recipient' or 'subject'", text)
            continue
        typ = as_type or declared or ("subject" if "key" in obj else "recipient")
        if typ == "subject" and kind and "kind" not in obj:
            obj["kind"] = kind
        yield _checked(number, typ, obj, text)


def _skip_rest_of_line(stream: IO[str]) -> None:
    while True:
        chunk = stream.readline(MAX_LINE)
        if not chunk or chunk.endswith("\n"):
            return


# --------------------------------------------------------------------------- CSV


def _csv_rows(stream: IO[str], as_type: str | None, kind: str | None) -> Iterator[Row | Rejected]:
    csv.field_size_limit(MAX_LINE)
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise HeaderError(f"line 1: {exc}") from None
    columns = [c.strip() for c in header]
    typ = as_type or ("subject" if "key" in columns else "recipient" if "id" in columns else None)
    if typ is None:
        raise HeaderError("line 1: the header needs a 'key' column (subjects) or 'id' (recipients)")
    build = _subject_builder(columns, kind) if typ == "subject" else _recipient_builder(columns)
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            yield Rejected(start, None, f"cannot read this CSV record: {exc}", "")
            continue
        end = reader.line_num
        raw = ",".join(cells)
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            yield Rejected(
                start, None, f"{len(cells)} cells where the header has {len(columns)}", raw
            )
            continue
        try:
            obj = build(cells)
        except _CellError as exc:
            yield Rejected(start, exc.field, exc.message, raw)
            continue
        yield _checked(start, typ, obj, raw)


class _CellError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _split_type(column: str) -> tuple[str, str]:
    name, sep, typ = column.rpartition(":")
    if not sep or typ not in _CELL_TYPES or not name:
        return column, "text"
    return name, typ


def _cell(value: str, typ: str, field: str) -> Any:
    if typ == "text":
        return value
    v = value.strip()
    if typ == "bool":
        if v.lower() in _YES:
            return True
        if v.lower() in _NO:
            return False
        raise _CellError(field, f"{field}: {value!r} is not yes/no (true/false, 1/0)")
    if typ == "int":
        if re.fullmatch(r"[+-]?\d{1,30}", v):
            return int(v)
        raise _CellError(field, f"{field}: {value!r} is not a whole number")
    if typ == "number":
        if re.fullmatch(r"[+-]?\d{1,30}", v):
            return int(v)
        try:
            number = float(v)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and len(v) <= 60:
            return number
        raise _CellError(field, f"{field}: {value!r} is not a number")
    try:
        return json.loads(v)
    except (ValueError, RecursionError) as exc:
        raise _CellError(field, f"{field}: not valid JSON: {exc}") from None


def _recipient_builder(columns: list[str]) -> Any:
    plan: list[tuple[str, ...]] = []
    for i, col in enumerate(columns):
        parts = col.split(".")
        if col in _RECIPIENT_FIELDS:
            plan.append(("field", col))
        elif col == "consent":
            plan.append(("consent_json",))
        elif len(parts) == 2 and parts[0] == "addresses" and parts[1]:
            plan.append(("address", parts[1]))
        elif len(parts) == 2 and parts[0] == "consent" and parts[1] in ("promotional", "reminder"):
            plan.append(("consent", parts[1]))
        elif len(parts) == 3 and parts[0] == "consent" and parts[1] in ("channels", "rules"):
            plan.append(("consent_map", parts[1], parts[2]))
        else:
            raise HeaderError(
                f"line 1, column {i + 1}: {col!r} is not a recipient column (id, name, email, "
                "phone, timezone, locale, addresses.CHANNEL, consent, consent.promotional, "
                "consent.reminder, consent.channels.CHANNEL, consent.rules.RULE)"
            )

    def build(cells: list[str]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        consent: dict[str, Any] = {}
        for how, value, col in zip(plan, cells, columns, strict=True):
            if value == "":
                continue
            if how[0] == "field":
                obj[how[1]] = value
            elif how[0] == "address":
                obj.setdefault("addresses", {})[how[1]] = value
            elif how[0] == "consent_json":
                consent.update(_cell(value, "json", col) or {})
            elif how[0] == "consent":
                consent[how[1]] = _cell(value, "bool", col)
            else:
                consent.setdefault(how[1], {})[how[2]] = _cell(value, "bool", col)
        if consent:
            obj["consent"] = consent
        return obj

    return build


def _subject_builder(columns: list[str], kind: str | None) -> Any:
    plan: list[tuple[str, str, str]] = []  # (where, name, cell type)
    for i, col in enumerate(columns):
        name, typ = _split_type(col)
        if name in ("kind", "key", "hold_until"):
            plan.append((name, name, "text"))
        elif name.startswith("recipients.") and name != "recipients.":
            plan.append(("recipients", name.removeprefix("recipients."), "text"))
        elif name.startswith("attributes.") and name != "attributes.":
            plan.append(("attributes", name.removeprefix("attributes."), typ))
        elif name:
            plan.append(("attributes", name, typ))
        else:
            raise HeaderError(f"line 1, column {i + 1}: a column has no name")

    def build(cells: list[str]) -> dict[str, Any]:
        obj: dict[str, Any] = {"attributes": {}, "recipients": {}}
        if kind:
            obj["kind"] = kind
        for (where, name, typ), value, col in zip(plan, cells, columns, strict=True):
            if value == "":
                continue
            if where == "recipients":
                ids = _cell(value, "json", col) if value.lstrip().startswith("[") else value
                obj["recipients"][name] = ids
            elif where == "attributes":
                obj["attributes"][name] = _cell(value, typ, col)
            else:
                obj[where] = value
        return obj

    return build


# --------------------------------------------------------------------------- checking


def _checked(line: int, typ: str, obj: dict[str, Any], raw: str) -> Row | Rejected:
    """The item as the batch API would take it, or why not: checked here with the API's own
    models, so one bad record is refused alone instead of failing a whole batch."""
    model: type[BaseModel] = S.SubjectBatchItem if typ == "subject" else S.RecipientBatchItem
    try:
        checked = model.model_validate(obj)
    except ModelError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return Rejected(
            line, loc or None, f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")), raw
        )
    return Row(line, typ, checked.model_dump(mode="json", exclude_unset=True), raw)
