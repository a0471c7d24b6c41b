"""The ``duly`` commands that work on rule files without a server: ``rules check`` and
``simulate`` (the rules over a timeline, in virtual time)."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

import click

from duly.cli.common import (
    log,
)

# --------------------------------------------------------------------------- rules


@click.group()
def rules() -> None:
    """Work with rule files."""


@rules.command("check")
@click.argument("file", type=click.Path(dir_okay=False), envvar="DULY_RULES")
@click.option(
    "--no-templates",
    is_flag=True,
    envvar="DULY_NO_TEMPLATES",
    show_envvar=True,
    help="Do not require template files.",
)
@click.option(
    "--strict",
    is_flag=True,
    envvar="DULY_RULES_STRICT",
    show_envvar=True,
    help="Treat what this environment lacks (an unset ${VAR}) as an error, not a warning.",
)
def rules_check(file: str, no_templates: bool, strict: bool) -> None:
    """Validate a rule file: exit 0, or 2 with every error listed (FILE or DULY_RULES).

    The file is checked as written (``${VAR}`` left unexpanded, so a check without the
    secrets passes), then with this environment's variables: what `duly serve` would
    refuse here (an unset variable, or a value that is not a valid URL) is a warning, or an
    error with --strict."""
    from duly.core.rules.loader import RuleFileError, load_rules

    try:
        rf = load_rules(file, check_templates=not no_templates, resolve_env=False)
    except RuleFileError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
    except OSError as exc:
        click.echo(f"{file}: cannot read: {exc.strerror}", err=True)
        raise SystemExit(2) from None
    try:
        load_rules(file, check_templates=False, resolve_env=True)
    except RuleFileError as exc:
        label = "error" if strict else "warning"
        for error in exc.errors:
            click.echo(f"{label}: {error} (in this environment)", err=True)
        if strict:
            raise SystemExit(2) from None
    n = len(rf.rules)
    click.echo(f"{file}: OK, {n} rule{'s' if n != 1 else ''}")


# --------------------------------------------------------------------------- simulate


def _sim_span(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--max-span``: a span such as 400d, 10w or 36h (a timedelta)."""
    from datetime import timedelta

    from duly.core.model import DurationError, parse_duration

    if value is None:
        return None
    try:
        d = parse_duration(value)
    except DurationError as exc:
        raise click.BadParameter(f"{value!r}: expected a span such as 400d, 10w or 36h") from exc
    if d.months or d.business_days:
        raise click.BadParameter(f"{value!r}: use w, d, h, m or s (months and years vary)")
    span = timedelta(days=d.days, seconds=d.seconds)
    if span <= timedelta(0):
        raise click.BadParameter(f"{value!r}: expected a span longer than zero")
    return span


# What raises each limit of `duly simulate`: (flag, environment variable).
_SIM_LIMIT_FLAGS = {
    "span": ("--max-span", "DULY_SIM_MAX_SPAN"),
    "outcomes": ("--max-outcomes", "DULY_SIM_MAX_OUTCOMES"),
    "wall": ("--timeout", "DULY_SIM_TIMEOUT"),
}


@click.command()
@click.argument("rules_file", metavar="RULES.yaml", type=click.Path(dir_okay=False))
@click.argument("timeline", metavar="TIMELINE.jsonl", type=click.Path(dir_okay=False))
@click.option(
    "--until",
    envvar="DULY_SIM_UNTIL",
    show_envvar=True,
    default=None,
    help="End of virtual time (ISO 8601; default 30 days after the last line).",
)
@click.option(
    "--format",
    "fmt",
    envvar="DULY_SIM_FORMAT",
    show_envvar=True,
    default="jsonl",
    type=click.Choice(["jsonl", "table"]),
    show_default=True,
    help="Output format.",
)
@click.option(
    "--no-render",
    is_flag=True,
    envvar="DULY_SIM_NO_RENDER",
    show_envvar=True,
    help="Do not render templates (none are needed).",
)
@click.option(
    "--max-span",
    envvar="DULY_SIM_MAX_SPAN",
    show_envvar=True,
    default="400d",
    show_default=True,
    callback=_sim_span,
    help="Longest virtual time from the first line to the end (e.g. 400d, 10w, 36h).",
)
@click.option(
    "--max-outcomes",
    envvar="DULY_SIM_MAX_OUTCOMES",
    show_envvar=True,
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most outcome rows a run may record; past it the run stops (exit 2).",
)
@click.option(
    "--timeout",
    envvar="DULY_SIM_TIMEOUT",
    show_envvar=True,
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Most real seconds a run may take; past it the run stops (exit 2).",
)
def simulate(
    rules_file: str,
    timeline: str,
    until: str | None,
    fmt: str,
    no_render: bool,
    max_span: Any,
    max_outcomes: int,
    timeout: float,
) -> None:
    """Run the rules over a timeline in virtual time and print every outcome.

    Exit status 0 when the run completed, 2 for an invalid rule file or timeline or a run
    past one of its limits (--max-span, --max-outcomes, --timeout)."""
    from duly.core.rules.loader import RuleFileError
    from duly.engine.simulation import (
        EngineFailed,
        LimitExceeded,
        Limits,
        SimulationError,
        check_until,
        simulate_files,
    )
    from duly.engine.simulation.output import dumps_row, table

    end = None
    if until:
        try:
            end = datetime.fromisoformat(until)
            if end.tzinfo is None:
                raise ValueError
        except ValueError:
            click.echo(f"--until: {until!r} is not an ISO 8601 time with offset", err=True)
            raise SystemExit(2) from None
        try:
            end = check_until(end, "--until")
        except SimulationError as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(2) from None
    limits = Limits(span=max_span, outcomes=max_outcomes, wall=timeout)
    try:
        rows = simulate_files(rules_file, timeline, until=end, render=not no_render, limits=limits)
    except LimitExceeded as exc:
        flag, var = _SIM_LIMIT_FLAGS[exc.limit]
        sooner = "" if exc.limit == "wall" else "give an earlier --until, or "
        click.echo(
            f"duly simulate: {exc}. Nothing is printed; {sooner}raise the limit with {flag} "
            f"(or {var}).",
            err=True,
        )
        raise SystemExit(2) from None
    except EngineFailed as exc:
        click.echo(f"{rules_file}: {exc}", err=True)
        raise SystemExit(2) from None
    except (RuleFileError, SimulationError) as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
    except Exception as exc:  # the contract: exit 0 or 2, never a traceback
        log.debug("simulation failed", exc_info=True)
        click.echo(
            f"duly simulate: the simulation failed: {type(exc).__name__}: {exc} (a bug: please "
            "report it with the rule file and timeline)",
            err=True,
        )
        raise SystemExit(2) from None
    out = sys.stdout
    try:
        if fmt == "jsonl":
            for r in rows:
                out.write(dumps_row(r) + "\n")
        else:
            for line in table(rows):
                out.write(line + "\n")
        out.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`): the run itself completed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
