"""The audit page (admins only): every recorded action, newest first, filtered by who, what
kind of object, which object and dates, with an export as CSV or JSON lines.

Operators and viewers do not see this page (403): they see the actions on an object on its
own page ("Action history"); the whole trail, with who did what across everything, is for
admins (docs/reference/roles.md).

The export streams in batches of :data:`BATCH` (a connection per batch, keyset paging by
id), at most :data:`MAX_EXPORT` entries; a CSV cell that a spreadsheet would run as a
formula (starting with ``=``, ``+``, ``-``, ``@``) is prefixed with ``'``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from duly.store.audit import OBJECT_KINDS, entries_page
from duly.web.core import AdminUser, engine_of, page_of, parse_day, render, viewer_tz

router = APIRouter()

PAGE = 50
BATCH = 1000
MAX_EXPORT = 100_000
MAX_ID = 2**62
COLUMNS = (
    "id",
    "at",
    "actor",
    "action",
    "object_kind",
    "object_id",
    "subject",
    "summary",
    "before",
    "after",
    "request_id",
)


@dataclass
class Filters:
    actor: str = ""
    kind: str = ""
    object: str = ""
    from_: str = ""
    to: str = ""
    start: datetime | None = None
    end: datetime | None = None
    before: int | None = None

    def query(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "object_kind": self.kind,
            "object_id": self.object,
            "start": self.start,
            "end": self.end,
        }


def read_filters(request: Request) -> tuple[Filters, dict[str, str]]:
    """The query string's filters and, per field, what is wrong with it."""
    q = request.query_params
    f = Filters(
        actor=q.get("actor", "").strip(),
        kind=q.get("kind", "").strip(),
        object=q.get("object", "").strip(),
        from_=q.get("from", "").strip(),
        to=q.get("to", "").strip(),
    )
    errors: dict[str, str] = {}
    for name, value, size in (("actor", f.actor, 220), ("object", f.object, 400)):
        if len(value) > size:
            errors[name] = f"at most {size} characters"
    if f.kind and f.kind not in OBJECT_KINDS:
        errors["kind"] = f"choose one of {', '.join(OBJECT_KINDS)}"
    tz = viewer_tz(request)
    for name, value in (("from", f.from_), ("to", f.to)):
        if not value:
            continue
        try:
            d = parse_day(value)
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        if name == "to":
            d += timedelta(days=1)  # the whole day
        from duly.core.rules.timemath import resolve_local

        instant = resolve_local(datetime.combine(d, time(0, 0)), tz)
        if name == "from":
            f.start = instant
        else:
            f.end = instant
    if f.start and f.end and f.start >= f.end:
        errors["to"] = "the end date is before the start date"
    before = q.get("before", "").strip()
    if before:
        if not before.isdigit() or not 1 <= int(before) <= MAX_ID:
            errors["before"] = "the page cursor is not an entry id"
        else:
            f.before = int(before)
    return f, errors


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, user: AdminUser) -> Response:
    f, errors = read_filters(request)
    rows: list[dict[str, Any]] = []
    if not errors:
        with engine_of(request).db.connect() as conn:
            rows = entries_page(conn, **f.query(), before_id=f.before, limit=PAGE + 1)
    page = page_of(rows, PAGE, request, param="before")
    return render(
        request,
        "audit/list.html",
        {
            "f": f,
            "errors": errors,
            "page": page,
            "kinds": [(k, k) for k in OBJECT_KINDS],
            "export_query": request.url.query,
            "max_export": MAX_EXPORT,
            "title": "Audit log",
        },
        status=400 if errors else 200,
    )


def _entries(request: Request, f: Filters) -> Iterator[dict[str, Any]]:
    """Every entry matching ``f`` (newest first), at most MAX_EXPORT, a batch per
    connection (no transaction is held open while the client reads)."""
    db = engine_of(request).db
    cursor, sent = f.before, 0
    while sent < MAX_EXPORT:
        with db.connect() as conn:
            rows = entries_page(
                conn, **f.query(), before_id=cursor, limit=min(BATCH, MAX_EXPORT - sent)
            )
        yield from rows
        sent += len(rows)
        if len(rows) < BATCH:
            return
        cursor = rows[-1]["id"]


def _plain(e: dict[str, Any]) -> dict[str, Any]:
    out = {c: e[c] for c in COLUMNS}
    out["at"] = e["at"].isoformat().replace("+00:00", "Z")
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for e in rows:
        p = _plain(e)
        w.writerow([_cell(p[c]) for c in COLUMNS])
        if buf.tell() > 64_000:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _jsonl(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    for e in rows:
        yield json.dumps(_plain(e), ensure_ascii=False, default=str) + "\n"


@router.get("/audit/export.{fmt}")
def audit_export(fmt: str, request: Request, user: AdminUser) -> Response:
    """The entries the filters select, streamed: ``csv`` or ``jsonl``."""
    if fmt not in ("csv", "jsonl"):
        return render(
            request,
            "error.html",
            {"title": "Not found", "message": "Export as audit/export.csv or export.jsonl."},
            404,
        )
    f, errors = read_filters(request)
    if errors:
        name, problem = next(iter(errors.items()))
        return render(
            request, "error.html", {"title": "Bad request", "message": f"{name}: {problem}."}, 400
        )
    rows = _entries(request, f)
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    body = _csv(rows) if fmt == "csv" else _jsonl(rows)
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="duly-audit.{fmt}"'},
    )
