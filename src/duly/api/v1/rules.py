"""/v1/rules, /v1/rules:check and /v1/simulate: the loaded rules, a rule file checked without
loading it, and a simulation of posted rules over a posted timeline."""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from duly.api import schemas as S
from duly.api.errors import ApiError, error_response
from duly.api.v1.common import EngineDep, error_docs
from duly.core.errors import DulyError

router = APIRouter()


@router.get("/rules", response_model=S.RulesOut, tags=["rules"])
def get_rules(eng: EngineDep) -> S.RulesOut:
    """The loaded rules."""
    rf = eng.rules
    out = []
    for r in rf.rules:
        trigger = (
            r.cron
            if r.cron
            else ((r.on.event or f"change of {r.on.change}") if r.on is not None else None)
        )
        out.append(
            S.RuleOut(
                name=r.name,
                kind=r.kind,
                subject=r.subject,
                category=str(r.category),
                channels=list(r.channels or r.fallback or ()),
                steps=[s.name for s in r.steps],
                trigger=trigger,
                line=r.line,
            )
        )
    return S.RulesOut(path=str(rf.path), timezone=rf.timezone, rules=out)


@router.post("/rules:check", response_model=S.RulesCheckOut, tags=["rules"])
def check_rules(body: S.RulesCheckIn) -> S.RulesCheckOut:
    """Validate a rule file without loading it (templates are not required)."""
    from duly.core.rules.loader import RuleFileError, load_rules_text

    try:
        rf = load_rules_text(body.rules, path="duly.yaml", check_templates=False, resolve_env=False)
    except RuleFileError as exc:
        return S.RulesCheckOut(
            ok=False,
            errors=[
                S.RuleErrorOut(file=e.file, line=e.line, field=e.field, message=e.message)
                for e in exc.errors
            ],
        )
    return S.RulesCheckOut(ok=True, rules=len(rf.rules))


# --------------------------------------------------------------------------- simulate

# A template file name posted to /simulate is written into a temporary folder: no path
# separator, no leading dot, no NUL, short enough for any file system (255 bytes).
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@router.post(
    "/simulate", response_model=S.SimulateOut, tags=["simulate"], responses=error_docs(429)
)
def simulate(body: S.SimulateIn) -> Any:
    """Run a simulation (docs/reference/simulate.md) of posted rules over a posted timeline. With
    ``templates`` (file name → source) messages are rendered; without, nothing is.

    Bounded (docs/reference/simulate.md): at most 92 days of virtual time from the first
    line, 10,000 outcomes and 10 s of real time (422 ``limit_exceeded``, field ``until``),
    and two simulations at a time (429 ``busy`` with Retry-After)."""
    from duly.engine import simulation as sims

    srv = sims.server
    if not srv.try_enter():
        return error_response(
            429,
            "busy",
            f"the server is running as many simulations as it runs at once; try again in "
            f"{srv.retry_after} s (or run `duly simulate`)",
            None,
            headers={"Retry-After": str(srv.retry_after)},
        )
    try:
        return _simulate(body, srv.limits)
    finally:
        srv.leave()


def _simulate(body: S.SimulateIn, limits: Any) -> S.SimulateOut:
    from duly.core.rules.loader import RuleFileError, load_rules_text
    from duly.engine.simulation import (
        EngineFailed,
        LimitExceeded,
        SimulationError,
        check_until,
        describe_span,
        parse_timeline,
        run,
    )

    render = body.templates is not None
    with tempfile.TemporaryDirectory() as d:
        tdir = Path(d) / "templates"
        tdir.mkdir()
        for name, src in (body.templates or {}).items():
            if not _TEMPLATE_FILE.fullmatch(name):
                raise ApiError(
                    422, "invalid", f"bad template file name {name!r}", f"templates.{name}"
                )
            (tdir / name).write_text(src, encoding="utf-8")
        try:
            rf = load_rules_text(
                body.rules,
                path="duly.yaml",
                templates_dir=str(tdir),
                check_templates=render,
                resolve_env=False,
                check_channels=False,
            )
            timeline = parse_timeline(body.timeline, "timeline.jsonl")
        except RuleFileError as exc:
            raise ApiError(422, "invalid_rules", str(exc), "rules") from None
        except RecursionError:  # YAML nested thousands deep
            raise ApiError(
                422, "invalid_rules", "the rules are nested too deeply", "rules"
            ) from None
        except SimulationError as exc:
            raise ApiError(422, "invalid_timeline", str(exc), "timeline") from None
        try:
            until = check_until(body.until) if body.until is not None else None
        except SimulationError as exc:
            raise ApiError(422, "invalid", str(exc), "until") from None
        err = io.StringIO()
        try:
            rows = run(rf, timeline, until=until, render=render, stderr=err, limits=limits)
        except LimitExceeded as exc:
            bounds = (
                f"{describe_span(limits.span)} of virtual time" if limits.span else None,
                f"{limits.outcomes:,} outcomes" if limits.outcomes else None,
                f"{limits.wall:g} s" if limits.wall else None,
            )
            raise ApiError(
                422,
                "limit_exceeded",
                f"{exc} ({exc.limit}). This server simulates at most "
                f"{', '.join(b for b in bounds if b)}: give an earlier until, or run "
                "`duly simulate`, whose limits can be raised",
                "until",
            ) from None
        except EngineFailed as exc:
            raise ApiError(422, "simulation_failed", str(exc), None) from None
        except DulyError as exc:
            raise ApiError(422, "invalid", str(exc), exc.field) from None
    return S.SimulateOut(rows=rows, warnings=[w for w in err.getvalue().splitlines() if w])
