"""``duly import FILE``: bring an app's existing recipients and subjects in, from CSV or JSON
lines, through the batch API (``POST /v1/recipients:batch`` and ``/v1/subjects:batch``).

Either against a running server (``--url`` and ``--api-key``: the HTTP API), or straight
into the database (``--database`` and ``--rules``: the same batch functions, in this
process). Records are sent in batches, recipients before the subjects that follow them in
the file; a record the API refuses is reported with its line number and never stops the
others; a batch the server fails as a whole is retried one record at a time. Every upsert
is the record's whole state, so running the same import again changes nothing but the
subjects' revisions: nothing is planned or sent twice.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from duly.cli.common import opt_db, opt_rules
from duly.cli.import_rows import HeaderError, Rejected, Row, read_rows

__all__ = ["import_cmd"]

_SHOWN = 50  # rejected records printed; the rest go to --rejects FILE


@dataclass
class Outcome:
    ok: bool
    created: bool = False
    planned: int = 0
    field: str | None = None
    message: str = ""


@dataclass
class Summary:
    new: dict[str, int] = field(default_factory=lambda: {"recipient": 0, "subject": 0})
    updated: dict[str, int] = field(default_factory=lambda: {"recipient": 0, "subject": 0})
    checked: dict[str, int] = field(default_factory=lambda: {"recipient": 0, "subject": 0})
    planned: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def lines(self, seconds: float) -> list[str]:
        out = []
        for typ, plural in (("recipient", "recipients"), ("subject", "subjects")):
            n, u = self.new[typ], self.updated[typ]
            if self.checked[typ]:
                out.append(f"{plural}: {self.checked[typ]} checked, none imported (--dry-run)")
            if n or u:
                out.append(f"{plural}: {n + u} imported ({n} new, {u} updated)")
        if self.planned:
            out.append(f"deliveries planned: {self.planned}")
        if not out:
            out.append("nothing imported")
        bad = len(self.rejected)
        out.append(f"rejected: {bad} record{'' if bad == 1 else 's'}")
        out.append(f"took {seconds:.1f} s")
        return out


class _Local:
    """The batch API's functions, called in this process on the database."""

    def __init__(self, rules: str | None, database: str) -> None:
        from duly.cli.common import load_rule_file
        from duly.engine.service import Engine
        from duly.store.db import make_engine

        rf, _ = load_rule_file(rules, check_templates=False)
        self.db = make_engine(database)
        self.engine = Engine(rf, self.db)

    def send(self, typ: str, items: list[dict[str, Any]]) -> list[Outcome]:
        from duly.api import schemas as S
        from duly.api.v1.recipients import batch_recipients
        from duly.api.v1.subjects import batch_subjects

        if typ == "recipient":
            r = batch_recipients(S.RecipientBatchIn(recipients=items), self.engine)  # type: ignore[arg-type]
            return [_outcome(x.ok, x.created, 0, x.error) for x in r.results]
        s = batch_subjects(S.SubjectBatchIn(subjects=items), self.engine)  # type: ignore[arg-type]
        return [_outcome(x.ok, x.revision == 1, x.planned or 0, x.error) for x in s.results]

    def close(self) -> None:
        self.db.dispose()


class _Remote:
    """A running server's batch API, over HTTP."""

    def __init__(self, url: str, api_key: str) -> None:
        from duly.client import Client

        self.client = Client(url, api_key, timeout=120.0)

    def send(self, typ: str, items: list[dict[str, Any]]) -> list[Outcome]:
        if typ == "recipient":
            r = self.client.upsert_recipients(items)
            return [_outcome(x.ok, x.created, 0, x.error) for x in r.results]
        s = self.client.upsert_subjects(items)
        return [_outcome(x.ok, x.revision == 1, x.planned or 0, x.error) for x in s.results]

    def close(self) -> None:
        self.client.close()


def _outcome(ok: bool, created: bool | None, planned: int, error: Any) -> Outcome:
    if ok:
        return Outcome(True, bool(created), planned)
    return Outcome(
        False, field=error.field if error else None, message=error.message if error else ""
    )


class _Stop(Exception):
    """The server cannot be reached: the import stops (re-running it is safe)."""


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--as",
    "as_type",
    type=click.Choice(["recipients", "subjects"]),
    default=None,
    envvar="DULY_IMPORT_AS",
    show_envvar=True,
    help="What the file holds (default: from the CSV header, or from each JSON line).",
)
@click.option(
    "--kind",
    envvar="DULY_IMPORT_KIND",
    show_envvar=True,
    default=None,
    help="The subject kind for records that name none (e.g. invoice).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    envvar="DULY_IMPORT_FORMAT",
    show_envvar=True,
    help="File format (default: from the file name: .csv, else JSON lines).",
)
@click.option(
    "--url",
    envvar="DULY_URL",
    show_envvar=True,
    default=None,
    help="A running duly server (e.g. http://127.0.0.1:8000): import through its HTTP API. "
    "Without it, the import writes to --database directly.",
)
@click.option(
    "--api-key",
    envvar="DULY_API_KEY",
    show_envvar=True,
    default=None,
    help="The API key for --url (made with `duly keys create`).",
)
@opt_db
@opt_rules
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    default=500,
    show_default=True,
    envvar="DULY_IMPORT_BATCH_SIZE",
    show_envvar=True,
    help="Records per batch call.",
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    envvar="DULY_IMPORT_REJECTS",
    show_envvar=True,
    help="Write every rejected record (line, field, error, input) to this CSV file.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="DULY_IMPORT_DRY_RUN",
    show_envvar=True,
    help="Read and check the file against the API's shapes; import nothing.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    envvar="DULY_IMPORT_PROGRESS",
    show_envvar=True,
    help="Show a progress bar (default: when the terminal is interactive).",
)
def import_cmd(
    file: str,
    as_type: str | None,
    kind: str | None,
    fmt: str | None,
    url: str | None,
    api_key: str | None,
    database: str,
    rules: str | None,
    batch_size: int,
    rejects_path: str | None,
    dry_run: bool,
    progress: bool | None,
) -> None:
    """Import recipients and subjects from FILE (CSV or JSON lines; - for standard input).

    Prints a summary; each rejected record is reported with its line number, and the
    command exits 1 if any was. Safe to run again: every record is an upsert."""
    fmt = fmt or ("csv" if file.lower().endswith(".csv") else "jsonl")
    typ = {"recipients": "recipient", "subjects": "subject", None: None}[as_type]
    if url and not api_key:
        raise click.UsageError("--url needs --api-key (or DULY_API_KEY)")
    sink: _Local | _Remote | None = None
    if not dry_run:
        sink = _Remote(url, api_key or "") if url else _local_sink(rules, database)
    started = time.monotonic()
    summary = Summary()
    try:
        with _open(file) as stream, _bar(stream, file, progress) as advance:
            rows = read_rows(stream, fmt, as_type=typ, kind=kind)
            _run(rows, sink, batch_size, summary, advance)
    except HeaderError as exc:
        click.echo(f"{file}: {exc}", err=True)
        raise SystemExit(2) from None
    except _Stop as exc:
        _report(summary, file, rejects_path)
        raise click.ClickException(str(exc)) from None
    finally:
        if sink is not None:
            sink.close()
    _report(summary, file, rejects_path)
    for line in summary.lines(time.monotonic() - started):
        click.echo(line)
    if summary.rejected:
        raise SystemExit(1)


def _local_sink(rules: str | None, database: str) -> _Local:
    from duly.store.admin import SCHEMA_ERRORS, driver_message

    try:
        return _Local(rules, database)
    except SCHEMA_ERRORS as exc:  # pragma: no cover - make_engine connects lazily
        raise click.ClickException(driver_message(exc)) from None


def _open(file: str) -> Any:
    if file == "-":
        return click.open_file("-", "r", encoding="utf-8-sig")
    path = Path(file)
    if not path.is_file():
        raise click.BadParameter(f"{file}: no such file", param_hint="FILE")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by `with`


class _bar:
    """A progress bar on standard error, by bytes read, when asked or interactive."""

    def __init__(self, stream: IO[str], file: str, show: bool | None) -> None:
        self.stream = stream
        interactive = sys.stderr.isatty()
        self.show = (interactive if show is None else show) and file != "-"
        self.total = os.path.getsize(file) if self.show else 0
        self.done = 0

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            return lambda: None
        self.bar = click.progressbar(
            length=max(self.total, 1), label="importing", file=sys.stderr, show_eta=True
        )
        self.bar.__enter__()

        def advance() -> None:
            try:
                at = self.stream.buffer.tell()  # type: ignore[attr-defined]
            except (AttributeError, OSError, ValueError):
                return
            if at > self.done:
                self.bar.update(at - self.done)
                self.done = at

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.bar.__exit__(None, None, None)


def _run(
    rows: Iterable[Row | Rejected],
    sink: _Local | _Remote | None,
    batch_size: int,
    summary: Summary,
    advance: Callable[[], None],
) -> None:
    pending: dict[str, list[Row]] = {"recipient": [], "subject": []}

    def flush(typ: str) -> None:
        batch, pending[typ] = pending[typ], []
        if batch and sink is not None:
            for row, result in zip(batch, _send(sink, typ, batch), strict=True):
                _count(summary, row, result)
        else:  # --dry-run: checked, not sent
            summary.checked[typ] += len(batch)
        advance()

    for row in rows:
        if isinstance(row, Rejected):
            summary.rejected.append(row)
            continue
        if row.type == "subject" and pending["recipient"]:
            flush("recipient")  # a subject may name recipients given above it
        pending[row.type].append(row)
        if len(pending[row.type]) >= batch_size:
            flush(row.type)
    flush("recipient")
    flush("subject")


def _send(sink: _Local | _Remote, typ: str, batch: list[Row]) -> list[Outcome]:
    """The results of one batch call; a batch that fails as a whole (a database error, a
    server error) is sent again one record at a time, so only the records at fault fail."""
    try:
        return _call(sink, typ, [r.item for r in batch])
    except _Stop:
        raise
    except Exception as exc:  # noqa: BLE001 - contained to this batch, retried one by one
        if len(batch) == 1:
            return [Outcome(False, message=f"the batch call failed: {_short(exc)}")]
    return [_send(sink, typ, [row])[0] for row in batch]


def _call(sink: _Local | _Remote, typ: str, items: list[dict[str, Any]]) -> list[Outcome]:
    from duly.client import TransportError

    try:
        return sink.send(typ, items)
    except TransportError as exc:
        raise _Stop(f"cannot reach the server: {exc}; re-running the import is safe") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def _count(summary: Summary, row: Row, result: Outcome) -> None:
    if not result.ok:
        summary.rejected.append(Rejected(row.line, result.field, result.message, row.raw))
        return
    (summary.new if result.created else summary.updated)[row.type] += 1
    summary.planned += result.planned


def _report(summary: Summary, file: str, rejects_path: str | None) -> None:
    """Rejected records on standard error (the first :data:`_SHOWN`), all of them in
    ``--rejects``, by line."""
    summary.rejected.sort(key=lambda r: r.line)
    for r in summary.rejected[:_SHOWN]:
        where = f"{r.field}: " if r.field and not r.message.startswith(f"{r.field}:") else ""
        click.echo(f"{file}:{r.line}: {where}{r.message}", err=True)
    more = len(summary.rejected) - _SHOWN
    if more > 0:
        hint = f" (all in {rejects_path})" if rejects_path else " (--rejects FILE lists all)"
        click.echo(f"… and {more} more rejected{hint}", err=True)
    if rejects_path:
        with open(rejects_path, "w", encoding="utf-8", newline="") as out:
            w = csv.writer(out)
            w.writerow(["line", "field", "error", "input"])
            for r in summary.rejected:
                w.writerow([r.line, r.field or "", r.message, r.raw])
