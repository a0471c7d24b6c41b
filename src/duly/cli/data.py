"""The ``duly`` commands that look after the database: ``migrate``, ``prune`` (old delivery
records) and ``outbox`` (messages kept by outbox channels)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from duly.cli.common import (
    load_rule_file,
    opt_db,
    opt_log,
    opt_rules,
    setup_logging,
)


@click.command()
@opt_db
def migrate(database: str) -> None:
    """Create or upgrade the database schema."""
    from duly.store.db import current_revision, make_engine
    from duly.store.db import migrate as do_migrate

    db = make_engine(database)
    do_migrate(db)
    click.echo(f"database at revision {current_revision(db)}")
    db.dispose()


# --------------------------------------------------------------------------- prune


@click.command()
@opt_rules
@opt_db
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="DULY_PRUNE_DRY_RUN",
    show_envvar=True,
    help="Count what would be pruned; change nothing.",
)
@click.option(
    "--older-than",
    envvar="DULY_PRUNE_OLDER_THAN",
    show_envvar=True,
    default=None,
    metavar="DURATION",
    help="Prune records of every outcome older than this (e.g. 30d) instead of the rule "
    "file's retention (default: sent 90d, failed and skipped 180d).",
)
@opt_log
def prune(
    rules: str | None, database: str, dry_run: bool, older_than: str | None, log_level: str
) -> None:
    """Delete old delivery records, as the rule file's `retention:` says.

    Sent, failed and set records keep their identity (a message is never sent twice) and
    lose their content and history; skipped and cancelled ones are deleted; pending ones are
    never touched. `duly serve` and `duly worker` do this once a day."""
    from duly.core.model import DurationError, parse_duration
    from duly.engine.retention import prune as do_prune
    from duly.store.admin import SCHEMA_ERRORS, driver_message
    from duly.store.db import make_engine

    setup_logging(log_level)
    age = None
    if older_than:
        try:
            age = parse_duration(older_than)
        except DurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    rf, _ = load_rule_file(rules, check_templates=False)
    db = make_engine(database)
    try:
        report = do_prune(db, rf, datetime.now(UTC), older_than=age, dry_run=dry_run)
    except SCHEMA_ERRORS as exc:
        raise click.ClickException(
            f"cannot prune: {driver_message(exc)}. Is the database migrated (`duly migrate`)?"
        ) from None
    finally:
        db.dispose()
    for line in report.lines():
        click.echo(line)


# --------------------------------------------------------------------------- outbox


@click.command()
@click.argument("delivery_id", required=False, type=int)
@opt_db
@opt_rules
@click.option(
    "--limit",
    envvar="DULY_OUTBOX_LIMIT",
    show_envvar=True,
    default=20,
    show_default=True,
    type=int,
    help="How many messages to list.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="DULY_OUTBOX_JSON",
    show_envvar=True,
    help="Print JSON.",
)
def outbox(
    delivery_id: int | None, database: str, rules: str | None, limit: int, as_json: bool
) -> None:
    """List messages kept in the outbox, or show one (DELIVERY_ID) in full."""
    from duly.store.db import make_engine
    from duly.store.store import Store

    rf, _ = load_rule_file(rules, check_templates=False)
    names = [n for n, c in rf.channels.items() if c.type == "outbox"] or ["email"]
    db = make_engine(database)
    from duly.store.db import is_postgres

    with db.connect() as conn:
        # one more than asked: whether more exist is worth saying
        rows = Store(postgres=is_postgres(db)).outbox(conn, names, limit + 1, delivery_id)
    db.dispose()
    more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        if more:
            click.echo(f"more than {limit} messages: raise --limit to see more", err=True)
        return
    if delivery_id is not None:
        if not rows:
            raise click.ClickException(f"no outbox message with delivery id {delivery_id}")
        r = rows[0]
        click.echo(
            f"Delivery:   {r['id']}\nTo:         {r['recipient']} <{r['to_address']}>\n"
            f"Sent:       {r['sent_at']}\nRule:       {r['rule']} / {r['step'] or '-'}\n"
            f"Subject:    {r['subject']}\nMessage-ID: {r['message_id']}\n"
            f"Title:      {r['title']}\n"
        )
        click.echo(r["body_text"] or r["body_html"] or "")
        return
    if not rows:
        click.echo("The outbox is empty.")
        return
    for r in rows:
        sent = r["sent_at"].strftime("%Y-%m-%d %H:%M:%S") if r["sent_at"] else "-"
        click.echo(f"{r['id']:>6}  {sent}  {r['recipient']:<12}  {r['title'] or ''}")
    n = len(rows)
    shown = f"{n} message{'s' if n != 1 else ''}"
    if more:
        shown = f"The newest {shown} of more; `--limit N` shows more"
    click.echo(f"\n{shown}; `duly outbox ID` shows one.")
