"""The ``duly`` commands that run the engine: ``serve`` (HTTP, dispatcher and scheduler),
``worker`` (the dispatcher alone) and ``run`` (one rule, now, by hand)."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
from datetime import UTC, datetime
from typing import Any

import click

from duly.cli.common import (
    load_rule_file,
    log,
    opt_breaker,
    opt_db,
    opt_log,
    opt_rules,
    setup_logging,
)


def _runtime(rf: Any, database: str, **kw: Any) -> Any:
    from duly.delivery.channels import ChannelConfigError
    from duly.engine.runtime import build_runtime

    try:
        return build_runtime(rf, database, **kw)
    except ChannelConfigError as exc:
        click.echo(f"{rf.path}: {exc}", err=True)
        raise SystemExit(2) from None


def http_stack() -> dict[str, str]:
    """uvicorn's C HTTP parser and event loop (``httptools``, ``uvloop``: dependencies of
    duly, ~10–15 % less CPU per request) where they are installed, else its pure-Python
    ``h11`` and ``asyncio``."""
    stack = {"http": "h11", "loop": "asyncio"}
    try:
        import httptools  # noqa: F401

        stack["http"] = "httptools"
    except ImportError:
        pass
    try:
        import uvloop  # noqa: F401

        stack["loop"] = "uvloop"
    except ImportError:
        pass
    return stack


def _start_warnings(rt: Any) -> None:
    """What a process that sends should say at start about its configuration."""
    from duly.delivery.preferences import warn_about_unsubscribe_links

    if rt.preferences is not None:
        types = [c.type for c in rt.rules.channels.values()]
        warn_about_unsubscribe_links(rt.preferences, types)


@click.command()
@opt_rules
@opt_db
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
    "--workers",
    envvar="DULY_WORKERS",
    show_envvar=True,
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=64),
    help="Processes answering HTTP (the API and the web UI; any of them answers any "
    "request). Above 1, this process runs the one dispatcher, scheduler and maintenance "
    "and answers no HTTP itself.",
)
@click.option(
    "--demo/--no-demo",
    envvar="DULY_DEMO",
    show_envvar=True,
    default=None,
    help="Load demo data (default: when running the bundled example rules on an empty database).",
)
@opt_breaker
@opt_log
def serve(
    rules: str | None,
    database: str,
    host: str,
    port: int,
    max_body: int,
    cookie_secure: bool,
    forwarded_allow_ips: str | None,
    workers: int,
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

    setup_logging(log_level)
    rf, bundled = load_rule_file(rules)
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
    # ClientAddress applies the proxy headers (uvicorn's own handling is off: it would not
    # tell the sign-in limits whether the address is a client's or a proxy's)
    proxies = forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"
    if workers > 1:
        worker_config = {
            "rules": os.path.abspath(str(rf.path)),
            "database": database,
            "max_body": max_body,
            "cookie_secure": cookie_secure,
            "proxies": proxies,
            "log_level": log_level,
        }
        _serve_workers(rt, workers, worker_config, host=host, port=port)
        return
    rt.start()
    app = ClientAddress(create_app(rt, max_body=max_body, cookie_secure=cookie_secure), proxies)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        **http_stack(),
    )
    server = uvicorn.Server(config)

    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal into the handler that
    # was installed before it. That one asks the server to exit, so the dispatcher is stopped
    # below (after its in-flight sends) instead of the process dying or printing "Aborted!"
    # -- and a signal that lands before uvicorn's own handlers are in place (start-up under
    # load) still ends the server, at its first look, instead of being lost.
    def _exit(signum: int, frame: Any) -> None:
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit)
    # What start-up built (modules, routes, schemas, rules) lives as long as the process:
    # freezing it keeps the cyclic collector from walking it again on every full
    # collection (those cost a batch upsert of 1,000 subjects ~40% more CPU, one in two).
    gc.collect()
    gc.freeze()
    try:
        server.run()
    finally:
        rt.stop()
        log.info("stopped")


# the HTTP workers' settings (JSON), from `duly serve --workers N` to the processes it starts
WORKER_ENV = "DULY_SERVE_HTTP_WORKER"


def _serve_workers(
    rt: Any, workers: int, worker_config: dict[str, Any], *, host: str, port: int
) -> None:
    """``duly serve --workers N``: this process runs ``rt`` (the dispatcher, scheduler,
    webhook sender and maintenance: one of each) and uvicorn's supervisor, which starts N
    processes serving :func:`http_worker_app` on one listening socket and restarts any that
    dies. SIGINT or SIGTERM: the workers finish their requests and end, then ``rt`` stops."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    try:
        wakeups = rt.serve_workers()
    except (RuntimeError, OSError) as exc:  # no Unix sockets here
        rt.stop(0)
        raise click.ClickException(f"--workers: {exc}") from None
    os.environ[WORKER_ENV] = json.dumps({**worker_config, "wakeups": wakeups.directory})
    rt.start()
    config = uvicorn.Config(
        f"{__name__}:http_worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=worker_config["log_level"],
        access_log=False,
        proxy_headers=False,
        **http_stack(),
    )
    sock = None
    try:
        sock = config.bind_socket()
        log.info("serving HTTP with %d worker processes", workers)
        Multiprocess(config, sockets=[sock]).run()  # returns once the workers have ended
    finally:
        if sock is not None:
            sock.close()
        rt.stop()
        log.info("stopped")


def http_worker_app() -> Any:
    """The app of one HTTP worker of ``duly serve --workers N`` (uvicorn calls it in each
    worker process): the API and the web UI over an API-only runtime (writes and plans; the
    main process sends), stopped when the process exits."""
    import atexit

    from duly.app import create_app
    from duly.core.rules.loader import load_rules
    from duly.engine.runtime import build_api_runtime
    from duly.web import ClientAddress

    cfg = json.loads(os.environ[WORKER_ENV])
    setup_logging(cfg["log_level"])
    rt = build_api_runtime(load_rules(cfg["rules"]), cfg["database"], cfg["wakeups"])
    atexit.register(rt.stop, 10.0)
    app = create_app(rt, max_body=cfg["max_body"], cookie_secure=cfg["cookie_secure"])
    return ClientAddress(app, cfg["proxies"])


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


@click.command()
@opt_rules
@opt_db
@opt_breaker
@opt_log
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
    setup_logging(log_level)
    rf, _ = load_rule_file(rules)
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


# --------------------------------------------------------------------------- run


@click.command("run")
@click.argument("rule", envvar="DULY_RUN_RULE")
@opt_rules
@opt_db
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
@opt_log
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
    from duly.core.errors import DulyError
    from duly.engine.manual import run_rule

    setup_logging(log_level)
    rf, _ = load_rule_file(rules)
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
