"""Wiring for long-running processes: rules + database + channels + dispatcher.

``duly serve`` runs everything in one process; ``duly worker`` runs only the dispatcher.
On PostgreSQL a listener thread turns ``NOTIFY duly_planned`` from any process into a wake-up,
so a worker never polls on a fixed interval.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from duly.core.model import RuleFile
from duly.delivery.webhooks import WebhookSender
from duly.engine.dispatch import Dispatcher
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

    def dispatcher_alive(self) -> bool:
        """The dispatcher's thread runs and its loop makes progress (what /readyz, /metrics
        and the dashboard report, and what the heartbeat stands for)."""
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
) -> Runtime:
    db = make_engine(database_url)
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
        webhooks=WebhookSender(db, rf, engine.clock),
    )


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
