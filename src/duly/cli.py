"""The ``duly`` command line. Every option also reads a ``DULY_*`` environment variable,
named in ``--help``."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import click

from duly import __version__

DEFAULT_DB = "sqlite:///./duly.db"

log = logging.getLogger("duly")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


def _opt_db(f: Any) -> Any:
    return click.option(
        "--database",
        envvar="DULY_DATABASE_URL",
        show_envvar=True,
        default=DEFAULT_DB,
        show_default=True,
        help="Database URL: sqlite:///FILE or postgresql://USER@HOST/DB.",
    )(f)


def _opt_rules(f: Any) -> Any:
    return click.option(
        "--rules",
        envvar="DULY_RULES",
        show_envvar=True,
        default=None,
        help="Rule file (default ./duly.yaml, or the bundled examples when absent).",
    )(f)


def _opt_breaker(f: Any) -> Any:
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


def _opt_log(f: Any) -> Any:
    return click.option(
        "--log-level",
        envvar="DULY_LOG_LEVEL",
        show_envvar=True,
        default="info",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="How much to log.",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="duly")
def main() -> None:
    """duly: reminders and notifications from rules in a file, sent on time, exactly once."""


def _load(rules: str | None, *, check_templates: bool = True) -> tuple[Any, bool]:
    from duly.rules.loader import RuleFileError, load_rules
    from duly.runtime import resolve_rules_path

    path, bundled = resolve_rules_path(rules)
    if not path.exists():
        raise click.ClickException(f"rule file {path} not found")
    try:
        return load_rules(path, check_templates=check_templates), bundled
    except RuleFileError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None


# --------------------------------------------------------------------------- serve / worker


def _runtime(rf: Any, database: str, **kw: Any) -> Any:
    from duly.channels import ChannelConfigError
    from duly.runtime import build_runtime

    try:
        return build_runtime(rf, database, **kw)
    except ChannelConfigError as exc:
        click.echo(f"{rf.path}: {exc}", err=True)
        raise SystemExit(2) from None


def _start_warnings(rt: Any) -> None:
    """What a process that sends should say at start about its configuration."""
    from duly.preferences import warn_about_unsubscribe_links

    if rt.preferences is not None:
        types = [c.type for c in rt.rules.channels.values()]
        warn_about_unsubscribe_links(rt.preferences, types)


@main.command()
@_opt_rules
@_opt_db
@click.option(
    "--host",
    envvar="DULY_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on.",
)
@click.option(
    "--port",
    envvar="DULY_PORT",
    show_envvar=True,
    default=8000,
    show_default=True,
    type=int,
    help="Port to listen on.",
)
@click.option(
    "--max-body",
    envvar="DULY_MAX_BODY",
    show_envvar=True,
    default=1_000_000,
    show_default=True,
    type=int,
    help="Largest request body accepted, in bytes.",
)
@click.option(
    "--cookie-secure",
    is_flag=True,
    envvar="DULY_COOKIE_SECURE",
    show_envvar=True,
    help="Send the web UI's cookies over HTTPS only (set it behind a TLS proxy).",
)
@click.option(
    "--forwarded-allow-ips",
    envvar="DULY_FORWARDED_ALLOW_IPS",
    show_envvar=True,
    default=None,
    show_default="uvicorn's FORWARDED_ALLOW_IPS, else 127.0.0.1,::1",
    help="Reverse proxies (comma-separated addresses or networks, or *) whose "
    "X-Forwarded-For and X-Forwarded-Proto are believed: the client's address is then the "
    "one they forward. The web UI's sign-in limits count failures by client address only "
    "when it is the client's own (see the web UI how-to).",
)
@click.option(
    "--demo/--no-demo",
    envvar="DULY_DEMO",
    show_envvar=True,
    default=None,
    help="Load demo data (default: when running the bundled example rules on an empty database).",
)
@_opt_breaker
@_opt_log
def serve(
    rules: str | None,
    database: str,
    host: str,
    port: int,
    max_body: int,
    cookie_secure: bool,
    forwarded_allow_ips: str | None,
    demo: bool | None,
    breaker_failures: int,
    breaker_cooldown: float,
    lease: float,
    concurrency: int,
    log_level: str,
) -> None:
    """Run everything in one process: HTTP server, dispatcher and scheduler."""
    import uvicorn

    from duly.app import create_app
    from duly.store.db import redact_url
    from duly.web import ClientAddress

    _setup_logging(log_level)
    rf, bundled = _load(rules)
    rt = _runtime(
        rf,
        database,
        send_workers=concurrency,
        breaker_failures=breaker_failures,
        breaker_cooldown=breaker_cooldown,
        lease=lease,
    )
    log.info("rules: %s (%d rules); database: %s", rf.path, len(rf.rules), redact_url(database))
    if demo or (demo is None and bundled):
        from duly.demo import seed

        n = seed(rt.engine)
        if n:
            log.info(
                "demo data loaded: %d subjects; the first messages go out within a minute "
                "(read them with `duly outbox`)",
                n,
            )
    _first_user(rt, demo=bool(demo or (demo is None and bundled)), host=host, port=port)
    _start_warnings(rt)
    rt.start()
    # ClientAddress applies the proxy headers (uvicorn's own handling is off: it would not
    # tell the sign-in limits whether the address is a client's or a proxy's)
    proxies = forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
    app = ClientAddress(create_app(rt, max_body=max_body, cookie_secure=cookie_secure), proxies)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal into the handler that
    # was installed before it: make that one a no-op so the dispatcher is stopped below
    # (after its in-flight sends) instead of the process dying or printing "Aborted!".
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server.run()
    finally:
        rt.stop()
        log.info("stopped")


def _first_user(rt: Any, *, demo: bool, host: str, port: int) -> None:
    """With the demo and nobody to sign in, make user ``admin`` with a random password and
    print it once to the terminal (never to the log); otherwise say how to make a user."""
    import secrets

    from duly.web.users import UserStore

    store = UserStore(rt.db)
    if store.count():
        return
    where = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if not demo:
        log.warning(
            "the web UI (%s) has no users yet: make one with `duly users create NAME --role admin`",
            where,
        )
        return
    password = secrets.token_urlsafe(12)
    store.create("admin", password, "admin", datetime.now(UTC))
    click.echo(
        f"\n  Web UI: {where}  —  sign in as  admin  with password  {password}\n"
        "  (shown only now; change it on the Account page or with `duly users passwd admin`)\n",
        err=True,
    )


@main.command()
@_opt_rules
@_opt_db
@_opt_breaker
@_opt_log
def worker(
    rules: str | None,
    database: str,
    concurrency: int,
    breaker_failures: int,
    breaker_cooldown: float,
    lease: float,
    log_level: str,
) -> None:
    """Run only the dispatcher (any number of workers can share one PostgreSQL database)."""
    _setup_logging(log_level)
    rf, _ = _load(rules)
    rt = _runtime(
        rf,
        database,
        send_workers=concurrency,
        breaker_failures=breaker_failures,
        breaker_cooldown=breaker_cooldown,
        lease=lease,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping after in-flight sends", signum)
        stop.set()
        rt.dispatcher.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _start_warnings(rt)
    rt.start()
    while not stop.is_set():
        stop.wait(0.5)
    rt.stop()
    log.info("worker stopped")


@main.command()
@_opt_db
def migrate(database: str) -> None:
    """Create or upgrade the database schema."""
    from duly.store.db import current_revision, make_engine
    from duly.store.db import migrate as do_migrate

    db = make_engine(database)
    do_migrate(db)
    click.echo(f"database at revision {current_revision(db)}")
    db.dispose()


# --------------------------------------------------------------------------- keys


@main.group()
def keys() -> None:
    """Manage API keys (stored hashed; a key is shown once, when made)."""


def _migrated(database: str) -> Any:
    """An engine on ``database``, migrated to the latest schema first."""
    from duly.store.db import make_engine
    from duly.store.db import migrate as do_migrate

    db = make_engine(database)
    do_migrate(db)
    return db


def _keystore(database: str) -> Any:
    from duly.keys import KeyStore

    return KeyStore(_migrated(database))


@keys.command("create")
@click.option(
    "--name",
    required=True,
    envvar="DULY_KEY_NAME",
    show_envvar=True,
    help="What the key is for (e.g. the app that uses it).",
)
@_opt_db
def keys_create(name: str, database: str) -> None:
    """Make a new API key. It is printed once, alone on the last line."""
    ks = _keystore(database)
    try:
        token, info = ks.create(name, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    click.echo(
        f"API key {info.id} ({info.name}) created. It is shown only now; keep it safe:", err=True
    )
    click.echo(token)


@keys.command("list")
@_opt_db
def keys_list(database: str) -> None:
    """List API keys (id, name, prefix, created, last used, revoked)."""
    ks = _keystore(database)
    rows = ks.list()
    if not rows:
        click.echo("No API keys. Make one with `duly keys create --name NAME`.")
        return
    for k in rows:
        used = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        click.echo(
            f"{k.id:>4}  {k.prefix}…  {k.name:<24} created {k.created_at:%Y-%m-%d}  "
            f"last used {used}  {state}"
        )


@keys.command("revoke")
@click.argument("key", envvar="DULY_KEY")
@_opt_db
def keys_revoke(key: str, database: str) -> None:
    """Revoke a key by id, name or prefix (KEY or DULY_KEY)."""
    ks = _keystore(database)
    info = ks.revoke(key, datetime.now(UTC))
    if info is None:
        raise click.ClickException(f"no single active key matches {key!r} (see `duly keys list`)")
    click.echo(f"revoked key {info.id} ({info.name})")


# --------------------------------------------------------------------------- users


@main.group()
def users() -> None:
    """Manage who signs in to the web UI (passwords stored as argon2 hashes)."""


def _userstore(database: str) -> Any:
    from duly.web.users import UserStore

    return UserStore(_migrated(database))


def _read_password(password_stdin: bool) -> str:
    """From standard input (one line) with --password-stdin, else asked for twice."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _opt_password_stdin(f: Any) -> Any:
    return click.option(
        "--password-stdin",
        is_flag=True,
        envvar="DULY_PASSWORD_STDIN",
        show_envvar=True,
        help="Read the password from the first line of standard input instead of asking.",
    )(f)


@users.command("create")
@click.argument("username", envvar="DULY_USERNAME")
@click.option(
    "--role",
    type=click.Choice(["admin", "viewer"]),
    default="viewer",
    show_default=True,
    envvar="DULY_USER_ROLE",
    show_envvar=True,
    help="admin: may act (send, cancel, edit); viewer: reads only.",
)
@_opt_password_stdin
@_opt_db
def users_create(username: str, role: str, password_stdin: bool, database: str) -> None:
    """Make a user who can sign in to the web UI (USERNAME or DULY_USERNAME)."""
    from duly.errors import InvalidInput

    store = _userstore(database)
    password = _read_password(password_stdin)
    try:
        u = store.create(username, password, role, datetime.now(UTC))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from None
    click.echo(f"user {u.username} created ({u.role})")


@users.command("list")
@_opt_db
def users_list(database: str) -> None:
    """List users (name, role, created, last sign-in)."""
    rows = _userstore(database).list()
    if not rows:
        click.echo("No users. Make one with `duly users create NAME --role admin`.")
        return
    for u in rows:
        seen = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
        click.echo(
            f"{u.username:<24} {u.role:<7} created {u.created_at:%Y-%m-%d}  last sign-in {seen}"
        )


@users.command("passwd")
@click.argument("username", envvar="DULY_USERNAME")
@_opt_password_stdin
@_opt_db
def users_passwd(username: str, password_stdin: bool, database: str) -> None:
    """Set a user's password (their other sessions end)."""
    from duly.errors import InvalidInput

    store = _userstore(database)
    password = _read_password(password_stdin)
    try:
        store.set_password(username, password, datetime.now(UTC))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from None
    click.echo(f"password of {username} changed")


@users.command("role")
@click.argument("username", envvar="DULY_USERNAME")
@click.argument("role", type=click.Choice(["admin", "viewer"]), envvar="DULY_USER_ROLE")
@_opt_db
def users_role(username: str, role: str, database: str) -> None:
    """Change a user's role."""
    from duly.errors import InvalidInput

    try:
        _userstore(database).set_role(username, role, datetime.now(UTC))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from None
    click.echo(f"{username} is now {role}")


@users.command("delete")
@click.argument("username", envvar="DULY_USERNAME")
@_opt_db
def users_delete(username: str, database: str) -> None:
    """Delete a user (their sessions end at once)."""
    if not _userstore(database).delete(username):
        raise click.ClickException(f"no user {username!r} (see `duly users list`)")
    click.echo(f"user {username} deleted")


# --------------------------------------------------------------------------- rules


@main.group()
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
def rules_check(file: str, no_templates: bool) -> None:
    """Validate a rule file: exit 0, or 2 with every error listed (FILE or DULY_RULES)."""
    from duly.rules.loader import RuleFileError, load_rules

    try:
        rf = load_rules(file, check_templates=not no_templates, resolve_env=False)
    except RuleFileError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from None
    except OSError as exc:
        click.echo(f"{file}: cannot read: {exc.strerror}", err=True)
        raise SystemExit(2) from None
    click.echo(f"{file}: OK, {len(rf.rules)} rules")


# --------------------------------------------------------------------------- simulate


def _sim_span(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--max-span``: a span such as 400d, 10w or 36h (a timedelta)."""
    from datetime import timedelta

    from duly.model import DurationError, parse_duration

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


@main.command()
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
    from duly.rules.loader import RuleFileError
    from duly.simulate import (
        EngineFailed,
        LimitExceeded,
        Limits,
        SimulationError,
        check_until,
        dumps_row,
        simulate_files,
        table,
    )

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


# --------------------------------------------------------------------------- prune


@main.command()
@_opt_rules
@_opt_db
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
@_opt_log
def prune(
    rules: str | None, database: str, dry_run: bool, older_than: str | None, log_level: str
) -> None:
    """Delete old delivery records, as the rule file's `retention:` says.

    Sent, failed and set records keep their identity (a message is never sent twice) and
    lose their content and history; skipped and cancelled ones are deleted; pending ones are
    never touched. `duly serve` and `duly worker` do this once a day."""
    import sqlalchemy as sa

    from duly.model import DurationError, parse_duration
    from duly.retention import prune as do_prune
    from duly.store.db import make_engine

    _setup_logging(log_level)
    age = None
    if older_than:
        try:
            age = parse_duration(older_than)
        except DurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    rf, _ = _load(rules, check_templates=False)
    db = make_engine(database)
    try:
        report = do_prune(db, rf, datetime.now(UTC), older_than=age, dry_run=dry_run)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        raise click.ClickException(
            f"cannot prune: {exc.orig}. Is the database migrated (`duly migrate`)?"
        ) from None
    finally:
        db.dispose()
    for line in report.lines():
        click.echo(line)


# --------------------------------------------------------------------------- run


@main.command("run")
@click.argument("rule", envvar="DULY_RUN_RULE")
@_opt_rules
@_opt_db
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="DULY_RUN_DRY_RUN",
    show_envvar=True,
    help="Show what would be sent or changed; send and change nothing.",
)
@click.option(
    "--subject",
    envvar="DULY_RUN_SUBJECT",
    show_envvar=True,
    default=None,
    metavar="KIND/KEY",
    help="Only this subject's deliveries (date-relative and event rules).",
)
@_opt_log
def run_rule_cmd(
    rule: str,
    rules: str | None,
    database: str,
    dry_run: bool,
    subject: str | None,
    log_level: str,
) -> None:
    """Run RULE now, by hand, and log what it did (RULE or DULY_RUN_RULE).

    A date-relative or event rule: its deliveries due now are sent, or their `set` applied,
    at once (with what that plans and is due at once, such as a change trigger's notice). A
    schedule (cron) rule: one occurrence fires now. With --dry-run the real dispatcher runs
    on a throwaway copy of the database: nothing is sent, nothing changes, and the list says
    what would happen."""
    from duly.errors import DulyError
    from duly.manual import run_rule

    _setup_logging(log_level)
    rf, _ = _load(rules)
    rt = _runtime(rf, database, send_workers=1)
    try:
        report = run_rule(rt.dispatcher, rule, subject=subject, dry_run=dry_run)
    except DulyError as exc:
        hint = {"rule": "RULE", "subject": "--subject"}.get(exc.field or "", None)
        raise click.BadParameter(str(exc), param_hint=hint) from None
    finally:
        rt.stop()
    for line in report.lines():
        click.echo(line)


# --------------------------------------------------------------------------- outbox


@main.command()
@click.argument("delivery_id", required=False, type=int)
@_opt_db
@_opt_rules
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

    rf, _ = _load(rules, check_templates=False)
    names = [n for n, c in rf.channels.items() if c.type == "outbox"] or ["email"]
    db = make_engine(database)
    from duly.store.db import is_postgres

    with db.connect() as conn:
        rows = Store(postgres=is_postgres(db)).outbox(conn, names, limit, delivery_id)
    db.dispose()
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
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
    click.echo(f"\n{len(rows)} messages; `duly outbox ID` shows one.")


if __name__ == "__main__":  # pragma: no cover
    main()
