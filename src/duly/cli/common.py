"""What the ``duly`` commands share: logging, the common options, loading the rule file.

Every option also reads a ``DULY_*`` environment variable, named in ``--help``.
"""

from __future__ import annotations

import logging
from typing import Any

import click

__all__ = [
    "DEFAULT_DB",
    "load_rule_file",
    "log",
    "opt_breaker",
    "opt_db",
    "opt_log",
    "opt_rules",
    "setup_logging",
]

DEFAULT_DB = "sqlite:///./duly.db"

log = logging.getLogger("duly")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


def opt_db(f: Any) -> Any:
    return click.option(
        "--database",
        envvar="DULY_DATABASE_URL",
        show_envvar=True,
        default=DEFAULT_DB,
        show_default=True,
        help="Database URL: sqlite:///FILE or postgresql://USER@HOST/DB.",
    )(f)


def opt_rules(f: Any) -> Any:
    return click.option(
        "--rules",
        envvar="DULY_RULES",
        show_envvar=True,
        default=None,
        help="Rule file (default ./duly.yaml, or the bundled examples when absent).",
    )(f)


def opt_breaker(f: Any) -> Any:
    """The dispatcher's options, shared by serve and worker."""
    f = click.option(
        "--lease",
        envvar="DULY_LEASE",
        show_envvar=True,
        default=30.0,
        show_default=True,
        type=click.FloatRange(min=3.0),
        help="Seconds a claimed delivery stays this process's without renewal. It is renewed "
        "while the send goes on, however slow; a process that dies loses its claims after this "
        "long and another takes them over.",
    )(f)
    f = click.option(
        "--concurrency",
        envvar="DULY_CONCURRENCY",
        show_envvar=True,
        default=8,
        show_default=True,
        type=click.IntRange(min=1, max=256),
        help="Sends in flight at once (at most this many can be repeated after a crash).",
    )(f)
    f = click.option(
        "--breaker-cooldown",
        envvar="DULY_BREAKER_COOLDOWN",
        show_envvar=True,
        default=60.0,
        show_default=True,
        type=click.FloatRange(min=0.1),
        help="Seconds a channel rests once its circuit breaker opens.",
    )(f)
    return click.option(
        "--breaker-failures",
        envvar="DULY_BREAKER_FAILURES",
        show_envvar=True,
        default=5,
        show_default=True,
        type=click.IntRange(min=1),
        help="Consecutive temporary failures that open a channel's circuit breaker.",
    )(f)


def opt_log(f: Any) -> Any:
    return click.option(
        "--log-level",
        envvar="DULY_LOG_LEVEL",
        show_envvar=True,
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="How much to log.",
    )(f)


def load_rule_file(rules: str | None, *, check_templates: bool = True) -> tuple[Any, bool]:
    """The rule file (``--rules``, else ./duly.yaml, else the bundled examples) and whether
    it is the bundled one; a missing file is a usage error, an invalid one exits 2."""
    from duly.core.rules.loader import RuleFileError, load_rules
    from duly.engine.runtime import resolve_rules_path

    path, bundled = resolve_rules_path(rules)
    if not path.exists():
        raise click.ClickException(f"rule file {path} not found")
    try:
        return load_rules(path, check_templates=check_templates), bundled
    except RuleFileError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
