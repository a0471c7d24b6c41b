"""Wiring for long-running processes: rules + database + channels + dispatcher.

``duly serve`` runs everything in one process; ``duly worker`` runs only the dispatcher.
On PostgreSQL a listener thread turns ``NOTIFY duly_planned`` from any process into a wake-up,
so a worker never polls on a fixed interval.

``duly serve --workers N``: the main process runs the one dispatcher (with the scheduler), the
webhook sender and the daily maintenance, and serves no HTTP; N processes serve HTTP, each
with an API-only runtime (:func:`build_api_runtime`: an engine for writes, no dispatcher).
:class:`Wakeups` carries what crosses between them on the machine: an HTTP worker's upsert
wakes the dispatcher (SQLite has no NOTIFY), an inbox send wakes the workers' streams, and
whether the dispatcher is alive (what every worker's ``/readyz`` reports).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from duly.core.model import RuleFile
from duly.delivery.webhooks import WebhookSender
from duly.engine.dispatch import Dispatcher
from duly.engine.inbox import InboxNotifier, InboxStore, inbox_channel_names
from duly.engine.service import Engine
from duly.store.db import Engine as Database
from duly.store.db import is_postgres, make_engine, migrate, write_transaction
from duly.store.liveness import forget_worker, record_heartbeat
from duly.store.notify import listen_planned

log = logging.getLogger("duly")

BUNDLED_RULES = Path(__file__).parents[1] / "demo" / "duly.yaml"


def resolve_rules_path(path: str | None) -> tuple[Path, bool]:
    """The rule file to load: the given one, else ./duly.yaml, else the bundled demo.
    Returns (path, is_bundled_demo)."""
    if path:
        return Path(path), False
    local = Path("duly.yaml")
    if local.exists():
        return local, False
    return BUNDLED_RULES, True


def used_channels(rf: RuleFile) -> set[str]:
    """Channel names some rule or step sends on (channels and fallback)."""
    names: set[str] = set()
    for r in rf.rules:
        names.update(r.channels if r.sends_message else ())
        names.update(r.fallback or ())
        for s in r.steps:
            names.update(s.channels or ())
            names.update(s.fallback or ())
    return names


def build_channels(rf: RuleFile) -> dict[str, Any]:
    """Build the channels the rules use. A configuration error (ChannelConfigError) names
    the channel and option; the engine does not start half-configured."""
    from duly.delivery.channels import build_channel

    used = used_channels(rf)
    # the outbox and inbox channels need no options and do no I/O: always built, so one-off
    # reminders (API and UI) can use the implicit email and inbox channels the loader adds
    return {
        name: build_channel(cfg, allow_private_targets=rf.allow_private_targets)
        for name, cfg in rf.channels.items()
        if name in used or cfg.type in ("outbox", "inbox")
    }


@dataclass
class Runtime:
    rules: RuleFile
    db: Database
    engine: Engine
    dispatcher: Dispatcher
    thread: threading.Thread | None = None
    listener: threading.Thread | None = None
    templates: Any = None  # duly.delivery.templates.TemplateStore: database templates
    metrics: Any = None  # duly.engine.metrics.Metrics: the dispatcher's instruments
    ack_links: Any = None  # duly.delivery.ack.AckLinks: signs and checks acknowledge links
    preferences: Any = None  # duly.delivery.preferences.PrefLinks: preference / unsubscribe links
    maintenance: Any = None  # duly.engine.retention.Maintenance: the daily prune, its own thread
    webhooks: WebhookSender | None = None  # sends the webhook outbox
    webhooks_thread: threading.Thread | None = None
    webhooks_stop: threading.Event = field(default_factory=threading.Event)
    heartbeat_thread: threading.Thread | None = None  # the keeper (see start)
    heartbeat_stop: threading.Event = field(default_factory=threading.Event)
    _started: datetime = field(default_factory=lambda: datetime.now(UTC))

    restarts: int = 0  # times the keeper found the dispatcher's thread ended and restarted it
    # an HTTP worker of `duly serve --workers N` (build_api_runtime): its dispatcher is never
    # started; the one of the main process does the sending
    api_only: bool = False
    wakeups: Any = None  # Wakeups: between the processes of `duly serve --workers N`
    # an InboxNotifier the runtime made (HTTP workers: woken by the main process's inbox
    # sends); None: the API makes one hooked to this process's dispatcher
    inbox_notifier: Any = None

    def dispatcher_alive(self) -> bool:
        """The dispatcher's thread runs and its loop makes progress (what /readyz, /metrics
        and the dashboard report, and what the heartbeat stands for). In an HTTP worker of
        ``duly serve --workers N``: the main process's dispatcher, as it last said."""
        if self.api_only:
            return self.wakeups is not None and self.wakeups.main_alive()
        thread = self.thread
        return thread is not None and thread.is_alive() and self.dispatcher.alive()

    def _start_dispatcher(self) -> None:
        self.thread = threading.Thread(
            target=self.dispatcher.run_forever, name="duly-dispatcher", daemon=True
        )
        self.thread.start()

    def start(self) -> None:
        from duly.engine.retention import Maintenance

        # SQLite: rows a killed predecessor left 'sending' are retaken now, not when their
        # lease runs out. (On PostgreSQL, workers may share a host name across machines or
        # PID namespaces, so a dead worker's rows wait for their lease: 30 s by default.)
        if not is_postgres(self.db):
            retake_dead_local_claims(self.db, self.engine, self.dispatcher)
        renderer = self.dispatcher.renderer
        if renderer is not None and hasattr(renderer, "start"):
            try:  # the first render pays no process start-up
                renderer.start()
            except Exception:  # they start on first use instead
                log.warning("could not start the render processes", exc_info=True)
        self._start_dispatcher()
        # keeper: restarts a dispatcher thread that ended, renews the leases of what it is
        # sending, and keeps this process's row in `workers` fresh (the dashboard of any
        # process lists the dispatchers) — all only while the dispatcher's loop is alive
        self.heartbeat_thread = threading.Thread(target=self._keep, name="duly-keeper", daemon=True)
        self.heartbeat_thread.start()
        if self.webhooks is not None:
            self.webhooks_thread = threading.Thread(
                target=self.webhooks.run_forever,
                args=(self.webhooks_stop,),
                name="duly-webhooks",
                daemon=True,
            )
            self.webhooks_thread.start()
        # retention: prune once a day on a thread of its own, never in the dispatcher's loop
        self.maintenance = Maintenance(self.db, self.rules, self.engine.clock.now)
        self.maintenance.start()
        if is_postgres(self.db):
            self.listener = threading.Thread(
                target=_listen, args=(self.db, self.dispatcher), name="duly-listen", daemon=True
            )
            self.listener.start()

    def serve_workers(self) -> Wakeups:
        """In the main process of ``duly serve --workers N``, before the HTTP workers start:
        open the :class:`Wakeups` (its directory is what the workers are given), wake the
        dispatcher when a worker says it planned something (SQLite; on PostgreSQL NOTIFY
        does it), tell the workers when an inbox item was sent, and keep the dispatcher's
        liveness written for their ``/readyz``."""
        wakeups = Wakeups.create()
        self.wakeups = wakeups
        inbox = set(inbox_channel_names(self.rules))
        previous = self.dispatcher.on_outcome

        def on_outcome(row: Any, logrow: dict[str, Any]) -> None:
            if previous is not None:
                previous(row, logrow)
            ident = row.identity
            if logrow.get("outcome") == "sent" and ident.channel in inbox:
                wakeups.broadcast(b"inbox " + ident.recipient.encode())

        self.dispatcher.on_outcome = on_outcome

        def on_message(msg: bytes) -> None:
            kind, _, arg = msg.partition(b" ")
            if kind == b"planned":
                self.dispatcher.wake_for(_due(arg.decode("ascii", "replace")))

        wakeups.listen(
            MAIN_SOCKET, on_message, on_tick=lambda: wakeups.write_status(self.dispatcher_alive())
        )
        return wakeups

    def _keep(self) -> None:
        """The keeper thread's loop (see ``start``)."""
        disp = self.dispatcher
        every = min(HEARTBEAT_SECONDS, max(1.0, disp.lease.total_seconds() / 3))
        last_beat = 0.0
        while not self.heartbeat_stop.is_set():
            thread = self.thread
            if thread is not None and not thread.is_alive() and not disp.stopping:
                self.restarts += 1
                log.error(
                    "the dispatcher's thread ended; restarting it (restart %d)", self.restarts
                )
                self._start_dispatcher()
            if self.dispatcher_alive():
                try:
                    disp.keep_leases()
                except Exception:
                    log.warning("renewing leases failed; trying again shortly", exc_info=True)
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    if _beat(self.db, disp.owner, self.engine.clock, self._started):
                        last_beat = time.monotonic()
                    if not is_postgres(self.db):
                        retake_dead_local_claims(self.db, self.engine, disp)
            elif thread is not None and thread.is_alive():
                log.error(
                    "the dispatcher has made no progress for %.0f s: heartbeat and lease "
                    "renewals paused, so other processes can retake its deliveries",
                    disp.stall_after,
                )
            self.heartbeat_stop.wait(every)
        try:
            with write_transaction(self.db) as conn:
                forget_worker(conn, disp.owner)
        except Exception:
            log.debug("could not remove the heartbeat row", exc_info=True)

    def stop(self, timeout: float | None = None) -> None:
        """Stop within ``timeout`` seconds in all (default: 10 s plus the longest send
        timeout of the channels). The sends in flight finish and are recorded; rows claimed
        but not yet sent are given back, pending again. A send still running at the end is
        abandoned: its row's lease runs out and the next process retakes it (recorded as
        possibly sent)."""
        if timeout is None:
            sends = [getattr(ch, "timeout", 30.0) for ch in self.dispatcher.channels.values()]
            timeout = 10.0 + max([float(t) for t in sends if t] or [30.0])
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.wakeups is not None:
            self.wakeups.close()  # the workers' /readyz: the dispatcher is stopping
        if self.inbox_notifier is not None:
            self.inbox_notifier.stop()
        if self.maintenance is not None:
            self.maintenance.stop()  # between two chunks of a prune
        self.dispatcher.stop()
        if self.webhooks is not None:
            self.webhooks_stop.set()
            self.webhooks.wake()
        if self.thread is not None:
            self.thread.join(left())
            if self.thread.is_alive():
                log.warning(
                    "stopping without waiting longer for the dispatcher: what it is still "
                    "sending will be retaken when its lease runs out"
                )
        self.heartbeat_stop.set()
        if self.heartbeat_thread is not None:
            self.heartbeat_thread.join(left())
        if self.webhooks is not None:
            if self.webhooks_thread is not None:
                self.webhooks_thread.join(left())
            self.webhooks.close()
        # last: closing kills renders in flight (a runaway one never holds the stop up)
        renderer = self.dispatcher.renderer
        if renderer is not None and hasattr(renderer, "close"):
            try:
                renderer.close()
            except Exception:
                log.debug("closing the render processes failed", exc_info=True)
        for ch in self.dispatcher.channels.values():
            try:
                ch.close()
            except Exception:  # closing is best effort
                log.debug("closing channel failed", exc_info=True)
        self.db.dispose()


def build_runtime(
    rf: RuleFile,
    database_url: str,
    *,
    send_workers: int = 8,
    breaker_failures: int = 5,
    breaker_cooldown: float = 60.0,
    lease: float = 30.0,
    api_only: bool = False,
) -> Runtime:
    """The runtime of a process that sends (``start`` it). With ``api_only`` (see
    :func:`build_api_runtime`) the database is not migrated and no webhook sender is made."""
    db = make_engine(database_url)
    if not api_only:
        migrate(db)
    engine = Engine(rf, db)
    from duly.delivery.ack import AckLinks
    from duly.delivery.preferences import PrefLinks
    from duly.delivery.rendering import Renderer
    from duly.delivery.templates import TemplateStore
    from duly.engine.metrics import Metrics

    templates = TemplateStore(db, rf.templates_dir, rules=rf)  # saved versions win
    # DULY_SECRET_KEY (else a secret generated once, in the database) and DULY_BASE_URL
    ack_links = AckLinks(db=db, clock=engine.clock)
    renderer = Renderer(
        rf.templates_dir,
        loader_overrides=templates.override,
        ack_links=ack_links,
        limits=rf.render,  # every render in a killable render process, within these bounds
        template_language=rf.template_language,
    )
    channels = build_channels(rf)
    from duly.engine.receipts import last_inbound_lookup

    for name, ch in channels.items():  # WhatsApp's 24-hour window: inbound times, from the store
        if hasattr(ch, "last_inbound"):
            ch.last_inbound = last_inbound_lookup(db, name)
    dispatcher = Dispatcher(
        engine,
        channels,
        renderer,
        send_workers=send_workers,
        breaker_failures=breaker_failures,
        breaker_cooldown=timedelta(seconds=breaker_cooldown),
        lease=timedelta(seconds=lease),
    )
    dispatcher.metrics = Metrics()
    # the same secret as acknowledge links (another salt); DULY_UNSUBSCRIBE_MAILTO optional
    preferences = PrefLinks(db=db, clock=engine.clock)
    dispatcher.preferences = preferences
    return Runtime(
        rf,
        db,
        engine,
        dispatcher,
        templates=templates,
        metrics=dispatcher.metrics,
        ack_links=ack_links,
        preferences=preferences,
        # always started: events queued under an earlier rule file are still sent
        webhooks=None if api_only else WebhookSender(db, rf, engine.clock),
        api_only=api_only,
    )


def build_api_runtime(rf: RuleFile, database_url: str, wakeups_dir: str) -> Runtime:
    """The runtime of one HTTP worker of ``duly serve --workers N``: the engine (writes,
    plans), links, templates and metrics of :func:`build_runtime`, but never started: the
    main process (which migrated the database) runs the dispatcher, the scheduler, the
    webhook sender and the maintenance. Through :class:`Wakeups` (directory ``wakeups_dir``)
    what this process plans wakes that dispatcher (SQLite; PostgreSQL's NOTIFY does it
    there), and that dispatcher's inbox sends wake this process's streams. ``stop`` it."""
    rt = build_runtime(rf, database_url, send_workers=1, api_only=True)
    wakeups = Wakeups(wakeups_dir)
    rt.wakeups = wakeups
    notifier = InboxNotifier(InboxStore(rt.db, inbox_channel_names(rf)))
    rt.inbox_notifier = notifier
    if not is_postgres(rt.db):

        def planned(due: datetime | None) -> None:
            wakeups.send(MAIN_SOCKET, b"planned " + (due.isoformat() if due else "").encode())

        rt.engine.add_wake_hook(planned)

    def on_message(msg: bytes) -> None:
        kind, _, arg = msg.partition(b" ")
        if kind == b"inbox":
            notifier.publish(arg.decode("utf-8", "replace") or None)

    wakeups.listen(f"{HTTP_SOCKET_PREFIX}{os.getpid()}", on_message)
    return rt


MAIN_SOCKET = "main"  # the main process's socket in a Wakeups directory
HTTP_SOCKET_PREFIX = "http-"  # + PID: an HTTP worker's
STATUS_FILE = "dispatcher"  # "alive" or "stopped", rewritten every second by the main process
STATUS_FRESH = 5.0  # seconds: an older status means the main process is gone or stuck


class Wakeups:
    """Messages between the processes of one ``duly serve --workers N`` on one machine:
    datagrams on Unix sockets in a private directory (``main``, ``http-PID``), best effort
    and never blocking: a lost message costs at most the poll that backs it up (the
    dispatcher's 30 s look, an inbox stream's 1 s poll). Plus a status file the main process
    rewrites every second: whether its dispatcher is alive.

    Messages: ``planned ISO`` (worker → main: deliveries planned, the earliest due then, or
    empty), ``inbox RECIPIENT`` (main → every worker: an inbox item was sent)."""

    def __init__(self, directory: str, *, owner: bool = False) -> None:
        if not hasattr(socket, "AF_UNIX"):
            raise RuntimeError("several HTTP workers need Unix sockets (not on this system)")
        self.directory = directory
        self.owner = owner  # the main process: removes the directory on close
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._in: socket.socket | None = None
        self._bound: str | None = None
        self._stop = threading.Event()
        self._status: tuple[bool, float] | None = None

    @classmethod
    def create(cls) -> Wakeups:
        """A new directory (mode 0700, under the system's temporary directory)."""
        return cls(tempfile.mkdtemp(prefix="duly-serve-"), owner=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def send(self, name: str, msg: bytes) -> bool:
        """Send ``msg`` to the process listening as ``name``; False when it is not there
        (or its queue is full): never raises, never waits."""
        try:
            self._out.sendto(msg, self._path(name))
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            if name.startswith(HTTP_SOCKET_PREFIX):  # a worker that died: forget its socket
                with contextlib.suppress(OSError):
                    os.unlink(self._path(name))
            return False
        except OSError:
            return False

    def broadcast(self, msg: bytes) -> None:
        """Send ``msg`` to every HTTP worker."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.startswith(HTTP_SOCKET_PREFIX):
                self.send(name, msg)

    def listen(self, name: str, on_message: Any, *, on_tick: Any = None) -> threading.Thread:
        """Bind ``name`` and call ``on_message(bytes)`` for each message on a thread of
        its own, and ``on_tick()`` at least every second, until :meth:`close`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock.bind(path)
        sock.settimeout(0.5)
        self._in, self._bound = sock, path

        def run() -> None:
            while not self._stop.is_set():
                try:
                    if on_tick is not None:
                        on_tick()
                    try:
                        msg = sock.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        if self._stop.is_set():
                            return
                        raise
                    on_message(msg)
                except Exception:  # a bad message or a failing hook: never end the thread
                    log.warning("handling a message from another process failed", exc_info=True)
                    self._stop.wait(0.5)

        thread = threading.Thread(target=run, name="duly-wakeups", daemon=True)
        thread.start()
        return thread

    def write_status(self, alive: bool) -> None:
        """The main process: say whether the dispatcher is alive (written when it changes,
        else refreshed once a second)."""
        now = time.monotonic()
        if self._status is not None and self._status[0] == alive and now - self._status[1] < 1.0:
            return
        tmp = self._path(STATUS_FILE + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write("alive" if alive else "stopped")
            os.replace(tmp, self._path(STATUS_FILE))
        except OSError:
            if self._stop.is_set():  # closed meanwhile: the directory is gone
                return
            raise
        self._status = (alive, now)

    def main_alive(self) -> bool:
        """An HTTP worker: the main process said, within the last few seconds, that its
        dispatcher is alive."""
        path = self._path(STATUS_FILE)
        try:
            with open(path) as f:
                said = f.read()
            age = time.time() - os.stat(path).st_mtime
        except OSError:
            return False
        return said == "alive" and age < STATUS_FRESH

    def close(self) -> None:
        """Stop listening; the main process removes the directory (the workers' status
        file with it: their /readyz then says the dispatcher stopped)."""
        self._stop.set()
        if self._in is not None:
            with contextlib.suppress(OSError):
                self._in.close()
            if not self.owner and self._bound is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._bound)
        self._out.close()
        if self.owner:
            shutil.rmtree(self.directory, ignore_errors=True)


HEARTBEAT_SECONDS = 30.0
# a worker silent this long is dropped from the workers table (it crashed long ago)
FORGET_WORKERS_AFTER = timedelta(days=1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def retake_dead_local_claims(db: Database, engine: Engine, disp: Dispatcher) -> int:
    """End the leases held by dispatchers of this machine whose process is gone (an owner
    is ``host:pid:…``): their rows are retaken at the next claim, each recorded as possibly
    sent. Owners on other machines keep their leases until they run out. Returns the number
    of rows freed; a database error is logged and retried later."""
    host = socket.gethostname()
    try:
        with write_transaction(db) as conn:
            now = engine.clock.now()
            dead = []
            for owner in engine.store.lease_owners(conn, now):
                h, _, rest = owner.partition(":")
                pid = rest.partition(":")[0]
                if h == host and owner != disp.owner and pid.isdigit() and not _pid_alive(int(pid)):
                    dead.append(owner)
            n = engine.store.expire_leases(conn, dead, now)
    except Exception:
        log.warning("could not look for claims of dead processes", exc_info=True)
        return 0
    if n:
        log.warning(
            "%d deliveries were being sent by processes that died (%s); they are retaken now "
            "(each may have gone out once already)",
            n,
            ", ".join(dead),
        )
        disp.wake()
    return n


def _beat(db: Database, owner: str, clock: Any, started: datetime) -> bool:
    """Write this process's row in ``workers`` (and forget workers silent for a day).
    Returns False (logged) when the database could not be written."""
    now = clock.now()
    try:
        with write_transaction(db) as conn:
            record_heartbeat(
                conn, owner, socket.gethostname(), started, now, now - FORGET_WORKERS_AFTER
            )
        return True
    except Exception:
        log.warning("worker heartbeat failed; trying again shortly", exc_info=True)
        return False


def _due(payload: str) -> datetime | None:
    """A duly_planned payload: the earliest due time planned, or "" (unknown)."""
    try:
        return datetime.fromisoformat(payload) if payload else None
    except ValueError:
        return None


def _listen(db: Database, dispatcher: Dispatcher) -> None:
    """LISTEN duly_planned on a dedicated connection; each notification wakes the dispatcher."""
    listen_planned(db, lambda payload: dispatcher.wake_for(_due(payload)), dispatcher._stop)
