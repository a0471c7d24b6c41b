"""Rules: the loaded rule file (its text and each rule with its next occurrences), and the
simulation page (docs/reference/simulate.md): paste or upload a timeline, see the outcomes table.

Next occurrences: a schedule (cron) rule's next fire times computed as the engine plans them
(``timemath.cron_next`` in the rule's zone, else the file's); any other rule's next pending
deliveries from the database (state and due time: the index ``ix_deliveries_state_due``).

A simulation runs the same code as ``POST /v1/simulate`` (rules text, timeline, ``run`` in
virtual time over a private in-memory database) with the templates the server uses — the
files of the loaded rule file and the versions saved in the database — so every message is
rendered. Nothing of the real database is read or changed by it.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from duly.core.errors import DulyError
from duly.core.model import Rule, RuleFile, held_until_cleared
from duly.core.rules import timemath
from duly.store.pages_deliveries import next_pending_of_rule
from duly.web.core import (
    CurrentUser,
    engine_of,
    parse_local_datetime,
    render,
    runtime_of,
    viewer_tz,
)

if TYPE_CHECKING:
    from duly.engine.simulation import Limits

router = APIRouter()

NEXT = 5
MAX_RULE_FILE = 1_000_000  # characters of the rule file shown
MAX_TIMELINE = 500_000  # characters of a timeline (the app's body limit is 1 MB)
MAX_TIMELINE_LINES = 5_000
MAX_RULES_TEXT = 300_000
MAX_ROWS = 1_000  # outcome rows shown (and held: the rest are only counted)
# A run's virtual span, outcomes and wall time, and how many run at once, are the server's
# (simulate.server, shared with POST /v1/simulate).


def example_timeline(now: datetime) -> str:
    """A timeline for the bundled demo rules (invoices and appointments), starting tomorrow
    09:00 UTC: reminders before and after a due date, an appointment's two reminders, and a
    payment that cancels an overdue reminder and sends a receipt."""
    import json

    day0 = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(9), UTC)

    def at(days: float, hours: float = 0) -> str:
        return (day0 + timedelta(days=days, hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")

    lines: list[dict[str, Any]] = [
        {
            "at": at(0),
            "recipient": {
                "id": "c1",
                "name": "Carla Diaz",
                "email": "carla@example.com",
                "timezone": "Europe/London",
                "locale": "en_GB",
            },
        },
        {
            "at": at(0),
            "subject": {
                "kind": "invoice",
                "key": "INV-1",
                "attributes": {"status": "sent", "amount": 250, "currency": "GBP", "due_at": at(9)},
                "recipients": {"customer": "c1"},
            },
        },
        {
            "at": at(0, 0.1),
            "subject": {
                "kind": "invoice",
                "key": "INV-2",
                "attributes": {"status": "sent", "amount": 80, "currency": "GBP", "due_at": at(4)},
                "recipients": {"customer": "c1"},
            },
        },
        {
            "at": at(0, 1),
            "subject": {
                "kind": "appointment",
                "key": "APT-1",
                "attributes": {
                    "status": "confirmed",
                    "service": "Dental check-up",
                    "starts_at": at(3, 5),
                    "duration_minutes": 30,
                },
                "recipients": {"client": "c1"},
            },
        },
        {
            "at": at(8, 6),
            "subject": {
                "kind": "invoice",
                "key": "INV-1",
                "attributes": {"status": "paid", "amount": 250, "currency": "GBP", "due_at": at(9)},
                "recipients": {"customer": "c1"},
            },
        },
    ]
    return "".join(json.dumps(line) + "\n" for line in lines)


# --------------------------------------------------------------------------- /rules


# A password written into a URL (smtp://user:secret@host): shown as *** on the pages.
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s'\"]*:)[^@/?#\s'\"]+(@)")


def _read_rule_file(rf: RuleFile) -> tuple[str | None, str | None]:
    """(text, problem): the rule file as it is on disk now, passwords in URLs hidden (the
    file should name secrets as ${VAR}; one written in is still not shown to viewers)."""
    try:
        with open(rf.path, encoding="utf-8", errors="replace") as f:
            text = _URL_PASSWORD.sub(r"\1***\2", f.read(MAX_RULE_FILE + 1))
    except OSError as exc:
        return None, f"cannot read {rf.path}: {exc.strerror}"
    if len(text) > MAX_RULE_FILE:
        return text[:MAX_RULE_FILE], f"only the first {MAX_RULE_FILE:,} characters are shown"
    return text, None


def _trigger(r: Rule) -> str:
    if r.cron:
        return f"schedule {r.cron}"
    if r.on is not None:
        if r.on.event:
            what = f"event {r.on.event}"
        else:
            what = f"change of {r.on.change}"
            if r.on.has_from:
                what += f" from {r.on.from_!r}"
            if r.on.has_to:
                what += f" to {r.on.to!r}"
        if r.delay is not None:
            what += f", after {r.delay.text or r.delay}"
        return what
    return "dates of the subject"


def _steps(r: Rule) -> list[dict[str, Any]]:
    out = []
    for s in r.steps:
        when = s.at.text if s.at is not None else None
        if s.time_of_day is not None:
            when = f"{when or ''} at {s.time_of_day.strftime('%H:%M')}".strip()
        repeat = None
        if s.repeat is not None:
            repeat = f"every {s.repeat.every.text}"
            if s.repeat.count is not None:
                repeat += f", {s.repeat.count} times"
            if s.repeat.until is not None:
                repeat += f", until {s.repeat.until.text}"
        out.append(
            {
                "name": s.name,
                "when": when,
                "repeat": repeat,
                "template": s.template or r.template or r.name,
                "condition": s.condition,
                "sends": s.sends_message,
            }
        )
    return out


def _cron_next(r: Rule, rf: RuleFile, now: datetime) -> tuple[list[datetime], str]:
    """The next fire times of a schedule rule, as the engine plans them
    (Engine._plan_next_occurrence: ``cron_next`` in the rule's zone, else the file's)."""
    tz = timemath.zone(r.timezone or rf.timezone)
    out: list[datetime] = []
    try:
        t = timemath.cron_next(r.cron or "", tz, now, inclusive=True)
        for _ in range(NEXT):
            out.append(t)
            t = timemath.cron_next(r.cron or "", tz, t)
    except ValueError:
        pass
    return out, tz.key


@router.get("/rules", response_class=HTMLResponse)
def rules_page(request: Request, user: CurrentUser) -> Response:
    eng = engine_of(request)
    rf: RuleFile = eng.rules
    now = eng.clock.now()
    text, problem = _read_rule_file(rf)
    rows = []
    with eng.db.connect() as conn:
        for r in rf.rules:
            row: dict[str, Any] = {
                "rule": r,
                "trigger": _trigger(r),
                "channels": list(r.channels or ()) + [f"{c} (fallback)" for c in r.fallback or ()],
                "steps": _steps(r),
                "cron": None,
                "pending": None,
            }
            if r.kind == "cron":
                row["cron"], row["zone"] = _cron_next(r, rf, now)
            else:
                # spec: Hold: a delivery waiting for an indefinite hold to be cleared is no
                # next occurrence (due last, so dropping it hides no other)
                row["pending"] = [
                    d
                    for d in next_pending_of_rule(conn, r.name, NEXT)
                    if not held_until_cleared(d["due_at"])
                ]
            rows.append(row)
    return render(
        request,
        "rules/rules.html",
        {
            "title": "Rules",
            "rf": rf,
            "lines": text.split("\n") if text is not None else None,
            "problem": problem,
            "rows": rows,
        },
    )


# --------------------------------------------------------------------------- /rules/simulate


@dataclass
class SimForm:
    timeline: str = ""
    rules: str = ""
    until: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    error_lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rows: list[dict[str, Any]] | None = None
    shown: int = 0
    total: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[tuple[str, int]] = field(default_factory=list)
    ran: bool = False


def _limits() -> Limits:
    from duly.engine import simulation as simulate

    return simulate.server.limits


def _sim_page(request: Request, sim: SimForm, status: int = 200) -> Response:
    from duly.engine.simulation import describe_span

    limits = _limits()
    return render(
        request,
        "rules/simulate.html",
        {
            "title": "Simulate",
            "sim": sim,
            "max_span": describe_span(limits.span) if limits.span else None,
            "limits": limits,
        },
        status,
    )


def _default_rules(request: Request) -> str:
    text, _ = _read_rule_file(engine_of(request).rules)
    return text or ""


@router.get("/rules/simulate", response_class=HTMLResponse)
def simulate_page(request: Request, user: CurrentUser, example: str = "") -> Response:
    sim = SimForm(rules=_default_rules(request))
    if example:
        sim.timeline = example_timeline(engine_of(request).clock.now())
        sim.notes.append(
            "Example loaded: it is written for the bundled demo rules (invoices and "
            "appointments). Run it, or edit it for your own rules."
        )
    return _sim_page(request, sim)


_WHERE_RE = re.compile(r"^(timeline|duly\.yaml|[^:\s]+):(\d+):\s*(.*)$", re.S)


def _copy_templates(request: Request, dst: Path) -> None:
    """The templates the server renders with: the files, then the saved versions on top."""
    rt = runtime_of(request)
    src = rt.rules.templates_dir
    if src and Path(src).is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    ts = getattr(rt, "templates", None)
    if ts is None:
        return
    for s in ts.summaries():
        if s.latest is None:
            continue
        for name, body in ts.sources(s.name).items():
            (dst / name).write_text(body, encoding="utf-8")


def _run(request: Request, sim: SimForm) -> None:
    from duly.core.rules.loader import RuleFileError, load_rules_text
    from duly.engine.simulation import (
        DEFAULT_TAIL,
        LimitExceeded,
        SimulationError,
        describe_span,
        execute,
        parse_timeline,
    )

    limits = _limits()
    rf: RuleFile = engine_of(request).rules
    rules_name = Path(rf.path).name or "duly.yaml"
    until = None
    if sim.until.strip():
        try:
            until = parse_local_datetime(sim.until, viewer_tz(request))
        except ValueError as exc:
            sim.errors["until"] = str(exc)
    if not sim.timeline.strip():
        sim.errors["timeline"] = "paste a timeline or choose a file (one JSON object per line)"
    elif len(sim.timeline) > MAX_TIMELINE:
        sim.errors["timeline"] = f"a timeline is at most {MAX_TIMELINE:,} characters here"
    elif sim.timeline.count("\n") >= MAX_TIMELINE_LINES:
        sim.errors["timeline"] = f"a timeline is at most {MAX_TIMELINE_LINES:,} lines here"
    if len(sim.rules) > MAX_RULES_TEXT:
        sim.errors["rules"] = f"rules are at most {MAX_RULES_TEXT:,} characters here"
    if sim.errors:
        return
    with tempfile.TemporaryDirectory(prefix="duly-sim-") as d:
        tdir = Path(d) / "templates"
        tdir.mkdir()
        _copy_templates(request, tdir)
        try:
            rules = load_rules_text(
                sim.rules,
                path=rules_name,
                templates_dir=str(tdir),
                check_templates=True,
                resolve_env=False,
                check_channels=False,
            )
        except RuleFileError as exc:
            sim.errors["rules"] = "the rules are not valid (nothing was run)"
            sim.error_lines["rules"] = [
                {"line": e.line, "field": e.field, "message": e.message} for e in exc.errors
            ]
            return
        except RecursionError:  # YAML nested thousands deep
            sim.errors["rules"] = "the rules are nested too deeply (nothing was run)"
            return
        try:
            timeline = parse_timeline(sim.timeline, "timeline")
        except SimulationError as exc:
            m = _WHERE_RE.match(str(exc))
            if m:
                line = int(m.group(2))
                sim.errors["timeline"] = f"line {line}: {m.group(3)}"
                lines = sim.timeline.splitlines()
                if 1 <= line <= len(lines):
                    sim.error_lines["timeline"] = [{"line": line, "text": lines[line - 1][:500]}]
            else:
                sim.errors["timeline"] = str(exc)
            return
        if not timeline:
            sim.errors["timeline"] = "the timeline has no lines"
            return
        start = timeline[0].at
        end = until or timeline[-1].at + DEFAULT_TAIL
        span = limits.span
        if span is not None and end - start > span:
            if until is not None:
                sim.errors["until"] = (
                    f"simulate at most {describe_span(span)} here: until must be before "
                    f"{(start + span).strftime('%Y-%m-%d %H:%M')} UTC"
                )
                return
            end = start + span
            sim.notes.append(
                f"Simulated {describe_span(span)} from the first line (the most this page "
                "runs); use `duly simulate` for longer runs."
            )
        err = io.StringIO()
        try:
            res = execute(
                rules,
                timeline,
                until=end,
                render=True,
                stderr=err,
                timeline_path="timeline",
                limits=limits,
                keep=MAX_ROWS,
            )
        except LimitExceeded as exc:
            sim.errors["until"] = (
                f"{exc}. Choose an earlier until, or use `duly simulate` for larger runs."
            )
            return
        except SimulationError as exc:
            sim.errors["until" if str(exc).startswith("until:") else "timeline"] = str(exc)
            return
        except DulyError as exc:
            sim.errors["timeline"] = str(exc)
            return
    sim.ran = True
    sim.warnings = [w for w in err.getvalue().splitlines() if w]
    sim.summary = list(res.counts.items())
    sim.shown, sim.total = len(res.rows), res.total
    sim.rows = []
    for o in res.rows:
        sim.rows.append(
            {
                **o,
                "at_t": _iso(o.get("at")),
                "planned_t": _iso(o.get("planned")),
            }
        )
    n = res.total
    sim.notes.append(f"{n} outcome{'s' if n != 1 else ''} until {_fmt_end(end)}.")


def _iso(v: str | None) -> datetime | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        return None


def _fmt_end(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


@router.post("/rules/simulate", response_class=HTMLResponse)
async def simulate_run(request: Request, user: CurrentUser) -> Response:
    """Run a simulation (read-only for the server: a private in-memory database), so a
    viewer may run one too."""
    form = await request.form()
    sim = SimForm(
        timeline=str(form.get("timeline") or "")
        if not isinstance(form.get("timeline"), UploadFile)
        else "",
        rules=str(form.get("rules") or "") if isinstance(form.get("rules"), str) else "",
        until=str(form.get("until") or "")[:100] if isinstance(form.get("until"), str) else "",
    )
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(MAX_TIMELINE * 4 + 1)
        if len(data) > MAX_TIMELINE * 4:
            sim.errors["file"] = f"the file is too large (at most {MAX_TIMELINE:,} characters)"
        else:
            try:
                sim.timeline = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                sim.errors["file"] = "the file is not UTF-8 text (a timeline is JSON lines)"
    sim.timeline = sim.timeline.replace("\r\n", "\n")
    sim.rules = sim.rules.replace("\r\n", "\n")
    if not sim.rules.strip():
        sim.rules = await run_in_threadpool(_default_rules, request)
    if not sim.errors:
        from duly.engine import simulation as simulate

        srv = simulate.server
        if not srv.try_enter():
            sim.errors["run"] = (
                "the server is running as many simulations as it runs at once; "
                f"try again in {srv.retry_after} s"
            )
            page = _sim_page(request, sim, 429)
            page.headers["Retry-After"] = str(srv.retry_after)
            return page
        try:  # in a worker thread: the limits stop it, and the server stays responsive
            await run_in_threadpool(_run, request, sim)
        finally:
            srv.leave()
    return _sim_page(request, sim, 200 if sim.ran else 400)
