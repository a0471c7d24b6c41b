"""The ``duly`` command line: the ``main`` group (the console script ``duly``). Every option
also reads a ``DULY_*`` environment variable, named in ``--help``.

The commands live in modules by what they do: :mod:`duly.cli.server` (serve, worker, run),
:mod:`duly.cli.data` (migrate, prune, outbox), :mod:`duly.cli.imports` (import), :mod:`duly.cli.accounts` (keys, users) and
:mod:`duly.cli.rulefiles` (rules check, simulate); :mod:`duly.cli.common` holds the shared
options.
"""

from __future__ import annotations

from typing import Any

import click

from duly import __version__
from duly.cli.accounts import keys, users
from duly.cli.data import migrate, outbox, prune
from duly.cli.imports import import_cmd
from duly.cli.rulefiles import rules, simulate
from duly.cli.server import _first_user as _first_user  # read by tests/web/test_web_auth.py
from duly.cli.server import run_rule_cmd, serve, worker

__all__ = ["main"]


class _Cli(click.Group):
    """The command group; a database URL whose driver is not installed (the ``postgres``
    extra) ends the command with its one-line error instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValueError as exc:
            from duly.store.db import PostgresDriverMissing

            if isinstance(exc, PostgresDriverMissing):
                raise click.ClickException(str(exc)) from None
            raise


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="duly")
def main() -> None:
    """duly: reminders and notifications from rules in a file, sent on time, exactly once."""


for _command in (
    serve, worker, run_rule_cmd, migrate, prune, outbox, import_cmd, keys, users, rules, simulate
):
    main.add_command(_command)
